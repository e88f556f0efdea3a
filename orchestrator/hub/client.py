"""The Fin(Ai)d hub's HTTP API, as the spec's ``FinAIdHubClient`` (§4.2).

``publish_event`` is ``POST {hub}/events`` and ``trigger_workflow`` is ``POST
{hub}/workflows/{id}/trigger``, both with ``Authorization: Bearer <service token>`` and an
``Idempotency-Key`` (the event id; ``<workflow>:<event id>`` for a trigger) so that a retry after a
lost answer is recognised by the hub. A ``429``/``503`` with ``Retry-After`` is reported with the
delay it asks for; timeouts, connection errors and 5xx are failures worth retrying; other 4xx are
failures too (the retry policy sends them to the dead letters in the end).
"""

from __future__ import annotations

import email.utils
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from orchestrator.hub.sink import first_line, redact_url
from schema.errors import UpstreamUnavailableError


@dataclass(frozen=True)
class HubRefusal(Exception):
    """The hub did not accept the request (or did not answer in time)."""

    reason: str
    retry_after_s: float | None = None

    def __str__(self) -> str:
        return self.reason


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class HubClient:
    """One pooled HTTP client for the hub; ``close()`` it (or use ``async with``)."""

    def __init__(self, base_url: str, token: str | None, *, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Content-Type": "application/json", "User-Agent": "accute-fl hub relay"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s)

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, payload: bytes, idempotency_key: str) -> httpx.Response:
        try:
            response = await self._http.post(
                path, content=payload, headers={"Idempotency-Key": idempotency_key}
            )
        except httpx.TimeoutException as exc:
            raise HubRefusal(
                f"the hub at {redact_url(self.base_url)} timed out ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise HubRefusal(
                f"the hub at {redact_url(self.base_url)} is unreachable ({first_line(exc)})"
            ) from None
        if response.status_code in (429, 503):
            raise HubRefusal(
                f"the hub answered {response.status_code} to POST {path}",
                retry_after_seconds(response.headers.get("Retry-After")),
            )
        if response.status_code == 409:  # already seen under this idempotency key
            return response
        if response.status_code >= 300:
            raise HubRefusal(f"the hub answered {response.status_code} to POST {path}")
        return response

    async def publish_event(self, body: bytes, event_id: uuid.UUID | str) -> None:
        """POST one envelope (already JSON) to ``/events``."""
        await self._post("/events", body, str(event_id))

    async def trigger_workflow(
        self,
        workflow_id: str,
        organization_id: str | None,
        input_data: dict[str, Any],
        *,
        idempotency_key: str,
    ) -> str:
        """Start a cross-product workflow; the hub's ``execution_id``."""
        import json

        payload = json.dumps(
            {"source": "accute", "tenant_id": organization_id, "input": input_data}, default=str
        ).encode()
        response = await self._post(f"/workflows/{workflow_id}/trigger", payload, idempotency_key)
        try:
            execution_id = response.json()["execution_id"]
        except (ValueError, KeyError, TypeError):
            raise HubRefusal(f"the hub's answer to workflow {workflow_id} has no execution_id") from None
        return str(execution_id)


def unreachable(exc: HubRefusal) -> UpstreamUnavailableError:
    """The CLI's one-line error for a hub call that failed."""
    return UpstreamUnavailableError(f"{exc}; check ACCUTE_HUB_URL and ACCUTE_HUB_TOKEN")
