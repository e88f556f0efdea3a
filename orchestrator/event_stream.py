"""Streamed answers to the client (the OpenAI door's ``stream: true``): written from the request's
own task, with the client's departure noticed at any moment, before the first piece included.

Why not Starlette's ``StreamingResponse``: under ASGI spec 2.3 (what uvicorn reports) it starts an
anyio task group and a task that listens for the disconnect, and writes the first bytes from a
second task, both on the path to the first token; and it listens only once the response has
started, so a client that left while the provider was still thinking kept the provider's stream
running until its first piece came (to its end, when the rest came at once), and the request was
accounted as answered.

``ClientWatch`` is one task per streamed request, started before the provider is asked (it runs
while the request waits for the provider, off the first token's path). After the request body,
the ASGI ``receive`` yields only ``http.disconnect``: the watch then cancels the request's task,
wherever it waits (for the cascade's first piece, or the next), so the cascade closes the
provider's stream and accounts for what was generated. The request's code catches that
cancellation and asks ``ClientWatch.client_left`` whether it was the client's (then it is taken
back and the request ends quietly) or someone else's (shutdown: it propagates).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class ClientWatch:
    """Cancels the current task when the client disconnects (until ``stop``)."""

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._stopped = False
        self.left = False
        self._watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # a body the request did not read (it read the whole body before the watch)
        if not self._stopped:
            self.left = True
            self._task.cancel()

    def stop(self) -> None:
        """No more cancelling: the response is complete (or the request ends otherwise)."""
        if not self._stopped:
            self._stopped = True
            self._watcher.cancel()

    def client_left(self) -> bool:
        """After catching ``CancelledError``: True when the client's departure caused it (the
        cancellation is then withdrawn); False when it must propagate."""
        self.stop()
        if not self.left:
            return False
        return self._task.uncancel() == 0


class EventStream(Response):
    """``text/event-stream``: each chunk of ``chunks`` written as it comes; the client's departure
    (``watch``) ends it, and ``chunks`` is always closed (so its producer accounts)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        watch: ClientWatch,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.chunks, self.watch = chunks, watch
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self.watch.stop()  # the end of the response makes ``receive`` say disconnect too
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self.watch.client_left():
                raise
        finally:
            self.watch.stop()
            await self.chunks.aclose()


def client_closed() -> Response:
    """The answer of a request whose client left (nobody reads it; logs and metrics say 499)."""
    return Response(status_code=499)
