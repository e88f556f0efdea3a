"""The Fin(Ai)d hub side of Accute (spec §4, §11.3; issue 13).

- ``store``: the relay's SQL over the outbox (claim a batch with a lease, mark it published,
  failed or dead, list and replay dead letters, the operator's numbers);
- ``backoff``: the retry policy (exponential backoff with jitter, tenacity's wait functions);
- ``amqp``: the RabbitMQ sink (topic exchange, publisher confirms, persistent messages);
- ``client``: the hub's HTTP API (``POST /events``, ``POST /workflows/{id}/trigger``);
- ``relay``: the loop that moves committed outbox rows to the sinks, at least once, a tenant's
  events in order;
- ``workflows``: cross-product workflows (YAML) started once per matching event.

The outbox itself is written by ``schema.events`` inside the caller's transaction; nothing here
is imported by the domain packages.
"""
