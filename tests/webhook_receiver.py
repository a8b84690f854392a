"""A loopback webhook receiver for tests: records every delivery (headers and raw body) and answers
from a script of status codes (then 200), optionally slowly."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: str
    answered: int


@dataclass
class Receiver:
    url: str = ""
    script: list[int] = field(default_factory=list)  # statuses to answer, in order; then `default`
    default: int = 200
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    redirect_to: str | None = None
    on_request: Any = None  # called with each Received before the answer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, predicate: Any, timeout: float = 60.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                seen = list(self.received)
            if predicate(seen):
                return seen
            time.sleep(0.05)
        raise AssertionError(f"the receiver did not see what was expected; got {len(seen)} requests")


@contextmanager
def webhook_receiver(**kwargs: Any) -> Iterator[Receiver]:
    receiver = Receiver(**kwargs)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length).decode()
            with receiver.lock:
                status = receiver.script.pop(0) if receiver.script else receiver.default
            item = Received(
                headers={k.lower(): v for k, v in self.headers.items()}, body=body, answered=status
            )
            if receiver.on_request is not None:
                receiver.on_request(item)
            if receiver.delay:
                time.sleep(receiver.delay)
            with receiver.lock:
                receiver.received.append(item)
            payload = b'{"ok": true}' if 200 <= status < 300 else b'{"error": "receiver says no"}'
            self.send_response(status)
            if receiver.redirect_to and 300 <= status < 400:
                self.send_header("location", receiver.redirect_to)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_port}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
