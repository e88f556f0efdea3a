"""The lean main module of ``accute-fl serve --workers N`` (``python -m orchestrator.served``).

uvicorn starts its workers with multiprocessing's *spawn*, which imports the parent's main module
again in every worker. Run from ``accute-fl``, that main module is the whole CLI (every command
group, 5 s of CPU on the reference machine), and on a busy machine the workers did not answer
uvicorn's 5 s health check in time: killed and restarted in a loop, the service never came up.
``accute-fl serve`` therefore replaces itself (``exec``) with this module, which imports nothing
at the top: a worker imports only ``orchestrator.service``. uvicorn's health check is also given
``WORKER_HEALTHCHECK_S`` instead of 5 s.
"""

from __future__ import annotations

import sys

#: Seconds a worker may take to answer uvicorn's health ping (start-up included) before it is killed.
WORKER_HEALTHCHECK_S = 60


def main(argv: list[str]) -> None:
    """``host port workers log_level access_log(0|1)``: run uvicorn with the service's settings."""
    host, port, workers, log_level, access_log = argv
    import uvicorn

    from orchestrator.cli.service_commands import uvicorn_options

    uvicorn.run(
        **uvicorn_options(host, int(port), int(workers), log_level, access_log == "1"),
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
