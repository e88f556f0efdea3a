"""A Ctrl-C or SIGTERM whose exception Python swallows in a garbage-collector callback still stops
the command (CI saw `run-local` ignore Ctrl-C raised inside SQLAlchemy's `_collection_gced`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

#: A "command" that is interrupted while ``__del__`` runs (where Python only prints an exception)
#: and then waits; without the re-delivery it would print "ran on" after 20 s.
SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    from orchestrator.cli import main as cli

    class Collected:
        def __del__(self) -> None:
            signal.raise_signal(getattr(signal, sys.argv[1]))
            time.sleep(0.05)  # the handler runs here, inside __del__

    def command() -> None:
        Collected()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.05)
        print("ran on")

    def run_command(argv: object, *options: object) -> int:  # stands in for the click dispatch in main()
        try:
            command()
        except KeyboardInterrupt:
            return cli._fail("interrupted", cli.EXIT_INTERRUPTED)
        except cli.Terminated:
            return cli._fail("terminated", cli.EXIT_TERMINATED)
        return 0

    cli._run = run_command
    sys.exit(cli.main([]))
    """
)


@pytest.mark.parametrize(
    ("name", "code", "word"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")]
)
def test_a_signal_swallowed_in_a_gc_callback_is_delivered_again(name: str, code: int, word: str) -> None:
    # Execute
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        # A shell's background job ignores SIGINT (CI ran this suite as one; Python then installs no
        # Ctrl-C handler and the signal did nothing); give the child a terminal's default disposition.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    # Assert
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "ran on" not in done.stdout
    assert f"error: {word}" in done.stderr
    assert "Exception ignored" not in done.stderr
