#!/usr/bin/env bash
# Make sure the local RabbitMQ the hub tests use is up; start it if it is not (never stops it).
# Exit 0 when the AMQP port answers, 1 when it cannot be started (callers decide whether that is fatal).
set -uo pipefail
host=${ACCUTE_TEST_RABBITMQ_HOST:-127.0.0.1}
port=${ACCUTE_TEST_RABBITMQ_PORT:-5672}

ready() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

ready && exit 0
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "ensure-rabbitmq: rabbitmq-server not found; is RabbitMQ installed?" >&2
  exit 1
fi
echo "ensure-rabbitmq: starting RabbitMQ" >&2
if command -v service >/dev/null 2>&1 && [ -x /etc/init.d/rabbitmq-server ]; then
  service rabbitmq-server start >/dev/null 2>&1 || true
fi
ready || rabbitmq-server -detached >/dev/null 2>&1 || true
for _ in $(seq 1 60); do
  ready && exit 0
  sleep 1
done
echo "ensure-rabbitmq: RabbitMQ at $host:$port is not answering" >&2
exit 1
