"""`accute-fl deploy`: an operator's setup steps for a Flower deployment, safe to run again."""

from __future__ import annotations

from pathlib import Path

import typer

deploy_app = typer.Typer(
    help="Deployment setup: the SuperLink connection `flwr run` uses, written so it can be repeated.",
    no_args_is_help=True,
)


@deploy_app.command("connection")
def connection(
    name: str = typer.Option(..., "--name", help="Connection name, as in `flwr run . NAME`."),
    address: str = typer.Option(..., "--address", help="The SuperLink's HOST:PORT."),
    root_certificates: Path | None = typer.Option(
        None,
        "--root-certificates",
        help="CA certificate (PEM) the SuperLink's TLS certificate is checked against.",
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="Plain gRPC without TLS (loopback and tests only)."
    ),
    make_default: bool = typer.Option(
        False, "--default", help="Make it the default connection (also when none is set)."
    ),
) -> None:
    """Create or replace one ``[superlink.NAME]`` entry in ``$FLWR_HOME/config.toml``, keeping the others."""
    from fl_server.connection import write_connection

    path = write_connection(
        name, address, root_certificates=root_certificates, insecure=insecure, make_default=make_default
    )
    typer.echo(f"connection {name} -> {address} in {path}")
