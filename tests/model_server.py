"""A scripted Messages-API server on loopback, the only fake model the tests use.

It speaks JSON and SSE like the real API (message_start, content blocks with text_delta and
input_json_delta chunks split mid-token, usage in message_delta, message_stop) so the harness is
driven through the real `anthropic` client. Answers come from a script (a queue of `Reply`) or,
when the queue is empty, from a responder function of the request body.
"""

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.live import free_port


@dataclass
class Reply:
    """One model answer (or one error)."""

    blocks: list[dict[str, Any]] = field(
        default_factory=list
    )  # {"type":"text","text"} / {"type":"tool_use",...}
    stop_reason: str | None = None  # default: tool_use when a tool_use block is present, else end_turn
    usage: dict[str, int] = field(default_factory=dict)
    status: int = 200  # anything else answers an error body
    error_type: str = "api_error"
    error_message: str = "scripted error"
    delay: float = 0.0  # seconds before the first byte
    chunk_delay: float = 0.0  # seconds between streamed events
    one_write: bool = False  # the whole stream in one write (a network read then brings every event)
    stream_error: str | None = None  # an `error` event of this type right after message_start

    def final_stop_reason(self) -> str:
        if self.stop_reason:
            return self.stop_reason
        return "tool_use" if any(b["type"] == "tool_use" for b in self.blocks) else "end_turn"


def text(value: str, **kwargs: Any) -> Reply:
    return Reply(blocks=[{"type": "text", "text": value}], **kwargs)


def tool_call(name: str, tool_input: dict[str, Any], *, say: str | None = None, **kwargs: Any) -> Reply:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": say}] if say else []
    blocks.append({"type": "tool_use", "name": name, "input": tool_input})
    return Reply(blocks=blocks, **kwargs)


def error(
    status: int, error_type: str = "api_error", message: str = "scripted error", **kwargs: Any
) -> Reply:
    return Reply(status=status, error_type=error_type, error_message=message, **kwargs)


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # hundreds of sessions connect at once in the benchmarks
    daemon_threads = True


def default_responder(body: dict[str, Any]) -> Reply:
    return text("Done.")


class ScriptedModel:
    def __init__(self, responder: Callable[[dict[str, Any]], Reply] = default_responder) -> None:
        self.script: queue.Queue[Reply] = queue.Queue()
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self._counter = 0
        self.timings: list[tuple[float, float]] = []  # (start, end) monotonic, per answered request
        self.in_flight = 0
        self.max_in_flight = 0
        self.server = _Server(("127.0.0.1", self.port), self._handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def push(self, *replies: Reply) -> None:
        for reply in replies:
            self.script.put(reply)

    def next_reply(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            self.requests.append(body)
        try:
            return self.script.get_nowait()
        except queue.Empty:
            return self.responder(body)

    def new_id(self, prefix: str) -> str:
        with self.lock:
            self._counter += 1
            return f"{prefix}_scripted{self._counter:06d}"

    def start(self) -> "ScriptedModel":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        model = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                started = time.monotonic()
                with model.lock:
                    model.in_flight += 1
                    model.max_in_flight = max(model.max_in_flight, model.in_flight)
                try:
                    self._answer(body)
                finally:
                    with model.lock:
                        model.in_flight -= 1
                        model.timings.append((started, time.monotonic()))

            def _answer(self, body: dict[str, Any]) -> None:
                if not self.path.startswith("/v1/messages"):
                    self._json(
                        404, {"type": "error", "error": {"type": "not_found_error", "message": "no route"}}
                    )
                    return
                with model.lock:
                    model.headers.append({k.lower(): v for k, v in self.headers.items()})
                reply = model.next_reply(body)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    self._json(
                        reply.status,
                        {
                            "type": "error",
                            "error": {"type": reply.error_type, "message": reply.error_message},
                        },
                        extra={"x-should-retry": "false"},
                    )
                    return
                if body.get("stream"):
                    self._stream(body, reply)
                else:
                    self._json(200, self._message(body, reply, full=True))

            def _json(
                self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", "req_scripted")
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _usage(self, body: dict[str, Any], reply: Reply) -> dict[str, int]:
                estimate = max(1, len(json.dumps(body.get("messages", []))) // 4)
                usage = {
                    "input_tokens": estimate,
                    "output_tokens": max(1, len(json.dumps(reply.blocks)) // 4),
                    "cache_read_input_tokens": 0,
                    "cache_creation_input_tokens": 0,
                }
                usage.update(reply.usage)
                return usage

            def _content(self, reply: Reply) -> list[dict[str, Any]]:
                out = []
                for block in reply.blocks:
                    block = dict(block)
                    if block["type"] == "tool_use":
                        block.setdefault("id", model.new_id("toolu"))
                    out.append(block)
                return out

            def _message(self, body: dict[str, Any], reply: Reply, *, full: bool) -> dict[str, Any]:
                usage = self._usage(body, reply)
                return {
                    "id": model.new_id("msg"),
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", "unknown"),
                    "content": self._content(reply) if full else [],
                    "stop_reason": reply.final_stop_reason() if full else None,
                    "stop_sequence": None,
                    "usage": usage if full else {**usage, "output_tokens": 1},
                }

            def _stream(self, body: dict[str, Any], reply: Reply) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("request-id", "req_scripted")
                self.send_header("connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    frames = (
                        f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
                        for event in self._events(body, reply)
                    )
                    if reply.one_write:
                        frames = iter([b"".join(frames)])
                    for frame in frames:
                        self.wfile.write(frame)
                        self.wfile.flush()
                        if reply.chunk_delay:
                            time.sleep(reply.chunk_delay)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def _events(self, body: dict[str, Any], reply: Reply) -> Iterator[dict[str, Any]]:
                usage = self._usage(body, reply)
                yield {"type": "message_start", "message": self._message(body, reply, full=False)}
                if reply.stream_error:
                    error = {"type": reply.stream_error, "message": reply.error_message}
                    yield {"type": "error", "error": error}
                    return
                for index, block in enumerate(self._content(reply)):
                    if block["type"] == "text":
                        yield {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {"type": "text", "text": ""},
                        }
                        words = block["text"]
                        for start in range(0, len(words), 7):
                            yield {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "text_delta", "text": words[start : start + 7]},
                            }
                    elif block["type"] == "tool_use":
                        yield {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {
                                "type": "tool_use",
                                "id": block["id"],
                                "name": block["name"],
                                "input": {},
                            },
                        }
                        raw = json.dumps(block["input"])
                        # Split mid-token on purpose: the client must join partial JSON.
                        for start in range(0, len(raw), 5):
                            yield {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": raw[start : start + 5]},
                            }
                    elif block["type"] == "thinking":
                        yield {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                        }
                        yield {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "thinking_delta", "thinking": block.get("thinking", "")},
                        }
                        yield {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "signature_delta", "signature": "sig"},
                        }
                    yield {"type": "content_block_stop", "index": index}
                yield {
                    "type": "message_delta",
                    "delta": {"stop_reason": reply.final_stop_reason(), "stop_sequence": None},
                    "usage": {
                        "output_tokens": usage["output_tokens"],
                        "input_tokens": usage["input_tokens"],
                        "cache_read_input_tokens": usage["cache_read_input_tokens"],
                        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
                    },
                }
                yield {"type": "message_stop"}

        return Handler


@contextmanager
def scripted_model(
    responder: Callable[[dict[str, Any]], Reply] = default_responder,
) -> Iterator[ScriptedModel]:
    model = ScriptedModel(responder).start()
    try:
        yield model
    finally:
        model.stop()
