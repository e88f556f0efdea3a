"""The `accute-fl` console script.

Every failure ends as one line on stderr and a non-zero exit code (the error's ``exit_code``):
usage mistakes from click, and ``AccuteError``s from the core. Unexpected exceptions also end
in one line unless ``ACCUTE_DEBUG=1`` asks for the traceback. Ctrl-C (exit 130) and SIGTERM (exit
143) unwind the command like an error — ``with`` blocks stop the processes they started and roll
back open transactions — and end in one line too.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence

import click
import typer
from typer.main import get_command

from orchestrator.cli import (
    admin_commands,
    audit_commands,
    consent_commands,
    db_commands,
    node_commands,
    privacy_audit_command,
    privacy_commands,
    run_local_command,
    runs_commands,
    service_commands,
    simulate_command,
    status_command,
)
from schema.errors import AccuteError

app = typer.Typer(
    name="accute-fl",
    help="Accute FL: a governed federated learning coordinator with differential privacy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(db_commands.app, name="db")
app.add_typer(admin_commands.org_app, name="org")
app.add_typer(admin_commands.user_app, name="user")
app.add_typer(audit_commands.app, name="audit")
app.add_typer(consent_commands.consent_app, name="consent")
app.add_typer(consent_commands.dsr_app, name="dsr")
privacy_commands.privacy_app.command("audit")(privacy_audit_command.audit)
app.add_typer(privacy_commands.privacy_app, name="privacy")
app.add_typer(privacy_commands.budget_app, name="budget")
app.add_typer(node_commands.node_app, name="node")
app.command("status")(status_command.status)
app.command("serve")(service_commands.serve)
app.command("simulate")(simulate_command.simulate_cmd)
app.command("run-local")(run_local_command.run_local)
app.add_typer(runs_commands.app, name="runs")
app.add_typer(service_commands.token_app, name="token")
app.add_typer(service_commands.keys_app, name="keys")

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


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return _run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: Sequence[str] | None) -> int:
    command = get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
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
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
