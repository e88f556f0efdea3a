"""Command groups imported only when they run, so a command pays for its own imports only.

`accute-fl --help` lists every command from the help lines registered here without importing a
command module; `accute-fl budget show` imports `privacy_commands` and nothing of `simulate` or
`serve` (which pull Flower, torch, FastAPI). A test checks each registered help line against the
command it stands for.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any

import click
import typer
from typer.core import TyperGroup


@dataclass(frozen=True)
class LazyCommand:
    """Where a command lives: ``module``'s ``attribute``, a ``typer.Typer`` (a group) or a function
    (one command). ``help`` is the line `--help` shows before the module is imported."""

    module: str
    attribute: str
    help: str

    def load(self, name: str) -> click.Command:
        target = getattr(importlib.import_module(self.module), self.attribute)
        if isinstance(target, typer.Typer):
            command: click.Command = typer.main.get_group(target)
        else:
            single = typer.Typer(add_completion=False)
            single.command(name)(target)
            command = typer.main.get_command(single)
        command.name = name
        return command


class LazyGroup(TyperGroup):
    """A Typer group whose ``lazy`` commands are imported when resolved; help lists them as stubs."""

    lazy: Mapping[str, LazyCommand] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        loaded = super().list_commands(ctx)
        return [*(name for name in loaded if name not in self.lazy), *self.lazy]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        loaded = super().get_command(ctx, cmd_name)
        if loaded is not None or cmd_name not in self.lazy:
            return loaded
        # Listing for --help or completion: a stand-in carrying the help line, nothing imported.
        return click.Command(cmd_name, help=self.lazy[cmd_name].help)

    def load(self, cmd_name: str) -> None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            self.add_command(self.lazy[cmd_name].load(cmd_name), cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args:
            self.load(args[0])
        try:
            return click.Group.resolve_command(self, ctx, args)
        except click.UsageError as exc:
            matches = get_close_matches(args[0], self.list_commands(ctx)) if args else []
            if not matches:
                raise
            suggestion = f"{exc.message.rstrip('.')}. Did you mean {', '.join(map(repr, matches))}?"
            raise click.UsageError(suggestion, ctx=exc.ctx) from None


def lazy_group(commands: Mapping[str, LazyCommand]) -> type[LazyGroup]:
    """A ``LazyGroup`` class bound to ``commands`` (Typer instantiates the class itself)."""
    return type("AccuteLazyGroup", (LazyGroup,), {"lazy": dict(commands)})


def command_help(command: Any) -> str:
    """The help line a listing shows for a loaded command (its first paragraph)."""
    text = command.short_help or command.help or ""
    return str(text).split("\n\n")[0].strip()
