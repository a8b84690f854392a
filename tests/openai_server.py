"""A scripted OpenAI-compatible Chat Completions server on loopback, driven through the real
`openai` client inside the provider.

It streams SSE chunks the way OpenAI does: a first chunk with the assistant role, content deltas a
few characters at a time, tool calls whose id and name come in the first chunk of each call and
whose arguments come split mid-token over the next ones (parallel calls interleaved by `index`),
a final chunk with `finish_reason`, a usage-only chunk when `stream_options.include_usage` is set,
and `data: [DONE]`. `GET /v1/models` lists the served models.
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
class Call:
    name: str
    arguments: dict[str, Any] | str  # a str is sent as is (to script malformed JSON)
    id: str | None = None


@dataclass
class Reply:
    content: str = ""
    reasoning: str = ""
    reasoning_key: str = "reasoning_content"  # vLLM/DeepSeek; OpenRouter and Ollama use "reasoning"
    calls: list[Call] = field(default_factory=list)
    finish_reason: str | None = None  # default: tool_calls when calls are present, else stop
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    status: int = 200
    error_message: str = "scripted error"
    error_type: str = "invalid_request_error"
    error_code: str | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    cut: bool = False  # end the stream without a finish_reason


def text(value: str, **kwargs: Any) -> Reply:
    return Reply(content=value, **kwargs)


def tool_call(name: str, arguments: dict[str, Any] | str, *, say: str = "", **kwargs: Any) -> Reply:
    return Reply(content=say, calls=[Call(name, arguments)], **kwargs)


def error(status: int, message: str = "scripted error", **kwargs: Any) -> Reply:
    return Reply(status=status, error_message=message, **kwargs)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class ScriptedOpenAI:
    def __init__(
        self,
        responder: Callable[[dict[str, Any]], Reply] | None = None,
        *,
        models: tuple[str, ...] = ("gpt-test", "local-model"),
        api_key: str | None = None,
    ) -> None:
        self.script: queue.Queue[Reply] = queue.Queue()
        self.responder = responder or (lambda body: text("Done."))
        self.models = models
        self.api_key = api_key  # when set, other keys get a 401
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        self._counter = 0
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.server = _Server(("127.0.0.1", self.port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def push(self, *replies: Reply) -> None:
        for reply in replies:
            self.script.put(reply)

    def new_id(self, prefix: str) -> str:
        with self.lock:
            self._counter += 1
            return f"{prefix}_{self._counter:06d}"

    def start(self) -> "ScriptedOpenAI":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            self.requests.append(body)
        try:
            return self.script.get_nowait()
        except queue.Empty:
            return self.responder(body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _authorized(self) -> bool:
                with server.lock:
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    server.paths.append(self.path)
                if server.api_key is None or self.headers.get("authorization") == f"Bearer {server.api_key}":
                    return True
                self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
                return False

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                if self.path.rstrip("/") != "/v1/models":
                    self._error(404, "no route", "invalid_request_error", None)
                    return
                data = [
                    {"id": m, "object": "model", "created": 0, "owned_by": "scripted"} for m in server.models
                ]
                self._json(200, {"object": "list", "data": data})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self._authorized():
                    return
                if self.path != "/v1/chat/completions":
                    self._error(404, "no route", "invalid_request_error", None)
                    return
                if body.get("model") not in server.models:
                    self._error(
                        404,
                        f"The model `{body.get('model')}` does not exist.",
                        "invalid_request_error",
                        "model_not_found",
                    )
                    return
                reply = server._next(body)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    self._error(reply.status, reply.error_message, reply.error_type, reply.error_code)
                    return
                if body.get("stream"):
                    self._stream(body, reply)
                else:
                    self._json(200, self._completion(body, reply))

            def _error(self, status: int, message: str, kind: str, code: str | None) -> None:
                self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("x-should-retry", "false")
                self.end_headers()
                self.wfile.write(data)

            def _usage(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
                prompt = reply.prompt_tokens
                if prompt is None:
                    prompt = max(1, len(json.dumps(body.get("messages", []))) // 4)
                completion = reply.completion_tokens
                if completion is None:
                    completion = max(
                        1, (len(reply.content) + len(reply.reasoning)) // 4 + 10 * len(reply.calls)
                    )
                usage: dict[str, Any] = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                }
                if reply.cached_tokens is not None:
                    usage["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens, "audio_tokens": 0}
                return usage

            def _finish(self, reply: Reply) -> str:
                return reply.finish_reason or ("tool_calls" if reply.calls else "stop")

            def _calls(self, reply: Reply) -> list[tuple[str, str, str]]:
                out = []
                for call in reply.calls:
                    raw = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
                    out.append((call.id or server.new_id("call"), call.name, raw))
                return out

            def _completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
                message: dict[str, Any] = {"role": "assistant", "content": reply.content or None}
                calls = self._calls(reply)
                if calls:
                    message["tool_calls"] = [
                        {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                        for i, n, a in calls
                    ]
                return {
                    "id": server.new_id("chatcmpl"),
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": self._finish(reply)}],
                    "usage": self._usage(body, reply),
                }

            def _stream(self, body: dict[str, Any], reply: Reply) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    for chunk in self._chunks(body, reply):
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        if reply.chunk_delay:
                            time.sleep(reply.chunk_delay)
                    if not reply.cut:
                        self.wfile.write(b"data: [DONE]\n\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return

            def _chunks(self, body: dict[str, Any], reply: Reply) -> Iterator[dict[str, Any]]:
                chunk_id = server.new_id("chatcmpl")
                created = int(time.time())

                def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
                    return {
                        "id": chunk_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": body["model"],
                        "system_fingerprint": "fp_scripted",
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                    }

                yield chunk({"role": "assistant", "content": "", "refusal": None})
                for start in range(0, len(reply.reasoning), 6):
                    yield chunk({reply.reasoning_key: reply.reasoning[start : start + 6]})
                for start in range(0, len(reply.content), 5):
                    yield chunk({"content": reply.content[start : start + 5]})
                calls = self._calls(reply)
                for index, (call_id, name, _raw) in enumerate(calls):
                    yield chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "id": call_id,
                                    "type": "function",
                                    "function": {"name": name, "arguments": ""},
                                }
                            ]
                        }
                    )
                # Arguments split mid-token, the parallel calls' fragments interleaved.
                pieces = [[raw[i : i + 4] for i in range(0, len(raw), 4)] for _i, _n, raw in calls]
                for step in range(max((len(p) for p in pieces), default=0)):
                    for index, fragments in enumerate(pieces):
                        if step < len(fragments):
                            yield chunk(
                                {"tool_calls": [{"index": index, "function": {"arguments": fragments[step]}}]}
                            )
                if reply.cut:
                    return
                yield chunk({}, self._finish(reply))
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield {
                        "id": chunk_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": body["model"],
                        "choices": [],
                        "usage": self._usage(body, reply),
                    }

        return Handler


@contextmanager
def scripted_openai(
    responder: Callable[[dict[str, Any]], Reply] | None = None, **kwargs: Any
) -> Iterator[ScriptedOpenAI]:
    server = ScriptedOpenAI(responder, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()
