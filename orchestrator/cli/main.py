"""The `accute-fl` console script.

Every failure ends as one line on stderr and a non-zero exit code (the error's ``exit_code``):
usage mistakes from click, and ``AccuteError``s from the core. Unexpected exceptions also end
in one line unless ``ACCUTE_DEBUG=1`` asks for the traceback. Ctrl-C (exit 130) and SIGTERM (exit
143) unwind the command like an error — ``with`` blocks stop the processes they started and roll
back open transactions — and end in one line too.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import click
import typer
from typer.main import get_group

from orchestrator.cli.lazy import LazyCommand, LazyGroup, lazy_group
from schema.errors import AccuteError

#: Every command, imported only when it runs (`accute-fl --help` imports none of them). To add a
#: command group: one line here, the help being the first paragraph of its Typer's ``help``.
COMMANDS: dict[str, LazyCommand] = {
    "db": LazyCommand(
        "orchestrator.cli.db_commands", "app", "Create, migrate and inspect the database schema."
    ),
    "org": LazyCommand("orchestrator.cli.admin_commands", "org_app", "Organizations (tenants)."),
    "user": LazyCommand("orchestrator.cli.admin_commands", "user_app", "Users of an organization."),
    "audit": LazyCommand("orchestrator.cli.audit_commands", "app", "The hash-chained audit log."),
    "security": LazyCommand(
        "orchestrator.cli.security_commands", "app", "Security anomalies: review and resolve."
    ),
    "dms": LazyCommand("orchestrator.cli.dms_commands", "app", "The dead man's switch of organizations."),
    "consent": LazyCommand(
        "orchestrator.cli.consent_commands",
        "consent_app",
        "Users' consents and the consent snapshot a tenant node trains on.",
    ),
    "dsr": LazyCommand(
        "orchestrator.cli.consent_commands",
        "dsr_app",
        "Data subject requests (GDPR/CCPA): file, list, process.",
    ),
    "privacy": LazyCommand(
        "orchestrator.cli.privacy_commands",
        "privacy_app",
        "Differential privacy math: epsilon and noise.",
    ),
    "budget": LazyCommand(
        "orchestrator.cli.privacy_commands",
        "budget_app",
        "Privacy budgets of tenants: caps, spending, history.",
    ),
    "status": LazyCommand(
        "orchestrator.cli.status_command",
        "status",
        "Show the database, its schema revision, and how many tenants, users and agent routes it holds.",
    ),
    "serve": LazyCommand(
        "orchestrator.cli.service_commands",
        "serve",
        "Run the HTTP service (OpenAPI at /docs and /openapi.json).",
    ),
    "simulate": LazyCommand(
        "orchestrator.cli.simulate_command",
        "simulate_cmd",
        "Run a governed DP federation of synthetic tenants and write a validation report.",
    ),
    "run-local": LazyCommand(
        "orchestrator.cli.run_local_command",
        "run_local",
        "Run a governed federation on real Flower processes on this machine and write its report.",
    ),
    "node": LazyCommand(
        "orchestrator.cli.node_commands",
        "node_app",
        "A tenant node's own privacy ledger and kept evaluations.",
    ),
    "deploy": LazyCommand(
        "orchestrator.cli.deploy_commands",
        "deploy_app",
        "Deployment setup: the SuperLink connection `flwr run` uses, written so it can be repeated.",
    ),
    "runs": LazyCommand(
        "orchestrator.cli.runs_commands",
        "app",
        "Federated training runs: status, rounds, participants, ε.",
    ),
    "hub": LazyCommand(
        "orchestrator.cli.hub_commands",
        "app",
        "The Fin(Ai)d hub: publish the event outbox (relay), its status, dead letters and replay.",
    ),
    "token": LazyCommand(
        "orchestrator.cli.service_commands", "token_app", "Bearer tokens for the HTTP service."
    ),
    "keys": LazyCommand(
        "orchestrator.cli.service_commands",
        "keys_app",
        "Key rotation (KEK, organization data keys, token signing key).",
    ),
    "threat": LazyCommand(
        "orchestrator.cli.threat_commands",
        "app",
        "Threat intelligence: import STIX 2.1 bundles and CSV feeds, list, expire.",
    ),
}

app = typer.Typer(
    name="accute-fl",
    help="Accute FL: a governed federated learning coordinator with differential privacy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=lazy_group(COMMANDS),
)

EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
UNWOUND = "unfinished work was rolled back and the processes it started were stopped"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the command unwinds (BaseException: no ``except
    Exception`` on the way swallows it)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _redeliver_swallowed_signals(previous: Callable[[Any], object]) -> Callable[[Any], object]:
    """An unraisable-exception hook that delivers a swallowed Ctrl-C or SIGTERM again.

    Python runs a signal's handler at the next bytecode boundary, and that may be inside a weakref
    callback or ``__del__`` run by the garbage collector; an exception raised there is only printed
    ("Exception ignored in ...") and the command would run on as if never interrupted (seen in CI:
    ``run-local`` ignored Ctrl-C inside SQLAlchemy's ``_collection_gced``). The signal is sent to
    the main thread again from a helper thread, so that its handler runs outside the callback (and
    outside this hook, where an exception would be swallowed too).
    """

    def redeliver(signum: int) -> None:
        timer = threading.Timer(0.01, signal.pthread_kill, (threading.main_thread().ident, signum))
        timer.daemon = True
        timer.start()

    def hook(unraisable: Any) -> object:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            redeliver(signal.SIGINT)
            return None
        if isinstance(unraisable.exc_value, Terminated):
            redeliver(signal.SIGTERM)
            return None
        return previous(unraisable)

    return hook


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    return code


def main(argv: Sequence[str] | None = None, *, collect_while_loading: bool = True) -> int:
    """Run one command; its exit code. ``collect_while_loading=False``: see ``entrypoint``."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    previous_hook = sys.unraisablehook
    if in_main_thread:
        sys.unraisablehook = _redeliver_swallowed_signals(previous_hook)
    try:
        return _run(argv, collect_while_loading)
    finally:
        sys.unraisablehook = previous_hook
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _load_uncollected(command: click.Command, name: str) -> None:
    """Import command ``name`` with the cyclic garbage collector paused, then freeze what it made.

    Importing a command (SQLAlchemy, pydantic-settings and the one ``Settings`` class, the tables)
    allocates some 100,000 long-lived objects, and the collector's full passes over them during the
    imports took about a tenth of a short command's start-up (~25 ms of ~370) to free a few hundred
    objects. Frozen (``gc.freeze``), they are never scanned again; collection resumes before the
    command runs, so long-running commands (``serve``, ``simulate``) collect as usual.
    """
    if not isinstance(command, LazyGroup):
        return
    gc.disable()
    try:
        command.load(name)
    finally:
        gc.freeze()
        gc.enable()


def _run(argv: Sequence[str] | None, collect_while_loading: bool = True) -> int:
    command = get_group(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and not collect_while_loading:
            _load_uncollected(command, args[0])
        result = command.main(args=args, prog_name="accute-fl", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "accute-fl"
        return _fail(f"{exc.format_message()} (see `{where} --help`)", EXIT_USAGE)
    except click.exceptions.Abort:
        return _fail("aborted; nothing was changed", 1)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except AccuteError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail(f"interrupted; {UNWOUND}", EXIT_INTERRUPTED)
    except Terminated:
        return _fail(f"terminated; {UNWOUND}", EXIT_TERMINATED)
    except Exception as exc:
        if os.environ.get("ACCUTE_DEBUG", "").lower() in ("1", "true", "yes"):
            raise
        first_line = (str(exc).splitlines() or [""])[0]
        return _fail(
            f"unexpected {type(exc).__name__}: {first_line} (set ACCUTE_DEBUG=1 for the traceback)",
            EXIT_INTERNAL,
        )
    if result == EXIT_INTERRUPTED:
        # Typer turns Ctrl-C into a silent ``Exit(130)``; no command returns 130 itself.
        return _fail(f"interrupted; {UNWOUND}", EXIT_INTERRUPTED)
    return result if isinstance(result, int) else 0


def entrypoint() -> None:
    """The console script: a fresh process per command, so the collector pauses while the command
    loads (``_load_uncollected``; a process that calls ``main`` itself, like the tests, keeps it)."""
    sys.exit(main(collect_while_loading=False))


if __name__ == "__main__":
    entrypoint()
