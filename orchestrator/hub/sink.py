"""What the relay hands events to: one interface for the RabbitMQ exchange and the HTTP hub."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from orchestrator.hub.store import Claimed


@dataclass(frozen=True)
class Acked:
    """The sink has the event (broker confirm, or the hub's 2xx), at ``at``."""

    at: datetime


@dataclass(frozen=True)
class Refused:
    """This attempt failed; ``retry_after_s`` when the sink said how long to wait."""

    error: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class NotTried:
    """Skipped because an earlier event of the same tenant failed in this batch."""


Outcome = Acked | Refused | NotTried


class SinkUnavailableError(Exception):
    """The sink cannot be reached at all (nothing of the batch was sent); the relay waits and
    reconnects without charging the events an attempt."""


class Sink(Protocol):
    name: str

    async def publish(self, batch: Sequence[Claimed]) -> list[Outcome]:
        """One outcome per event, in the batch's order; raises ``SinkUnavailableError`` only when
        nothing was sent."""
        ...

    async def close(self) -> None: ...


def body(event: Claimed) -> bytes:
    """The envelope as compact UTF-8 JSON (what both sinks send)."""
    return json.dumps(event.envelope, separators=(",", ":"), default=str).encode()


def redact_url(url: str) -> str:
    """A URL without its password, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


__all__: list[Any] = ["Acked", "NotTried", "Outcome", "Refused", "Sink", "SinkUnavailableError", "body"]
