"""A fake Fin(Ai)d hub: a real HTTP server on loopback answering from a script, recording requests."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float
    answered: str


@dataclass
class FakeHub:
    """``script`` maps a path prefix to answers consumed one per request there: ``"500"``,
    ``"429:<seconds>"``, ``"hang:<s>"`` (sleep then 200) or ``"200"``; then every request gets 200."""

    script: dict[str, list[str]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                with hub.lock:
                    queue = next((v for k, v in hub.script.items() if self.path.startswith(k)), [])
                    answer = queue.pop(0) if queue else "200"
                    hub.seen.append(
                        Seen(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            json.loads(raw or b"{}"),
                            time.monotonic(),
                            answer,
                        )
                    )
                code, _, arg = answer.partition(":")
                if code == "hang":
                    time.sleep(float(arg or 5))
                    code = "200"
                self.send_response(int(code))
                if code == "429":
                    self.send_header("Retry-After", arg or "1")
                payload = b"{}"
                if code == "200" and self.path.startswith("/workflows/"):
                    payload = json.dumps({"execution_id": f"exec-{uuid.uuid4().hex[:8]}"}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up (a hang it timed out on)
                    self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    def requests(self, prefix: str = "") -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path.startswith(prefix)]
