"""The Anthropic Messages API provider: streaming through the official SDK, with prompt caching
marks on the stable prefix (tools, system) and on the conversation tail."""

import json
import os
import threading
from collections.abc import Iterator
from functools import cached_property
from typing import Any

import anthropic
import httpx2
from django.conf import settings

from harness.providers.base import (
    ModelAnswer,
    ModelCancelled,
    ModelError,
    ModelRequest,
    ModelUsage,
    StreamListener,
)

CACHE = {"type": "ephemeral"}


class AnthropicProvider:
    _shared: "AnthropicProvider | None" = None
    _lock = threading.Lock()

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        name: str | None = None,
        client: Any = None,
        missing_key: str = "ANTHROPIC_API_KEY is not set on the server: the model cannot be called",
    ) -> None:
        # `name` is the registry name of a configured provider (its model ids are `<name>/<model>`);
        # `client` an anthropic SDK client of its own (AnthropicBedrock, AnthropicVertex).
        self.api_key = api_key
        self.name = name
        self.missing_key = missing_key
        self.client = client or anthropic.Anthropic(
            api_key=api_key or "missing",
            base_url=base_url,
            max_retries=0,  # the harness retries, visibly (session.status_rescheduled)
            timeout=settings.GALLEY_MODEL_TIMEOUT_SECONDS,
        )

    def _events(self, params: dict[str, Any], cancel: threading.Event) -> Iterator[dict[str, Any]]:
        """The stream's events as plain dicts (`messages.create(stream=True)`, each event's JSON).

        On the plain client the request goes out on the SDK's own HTTP client (its pool, proxies,
        TLS and timeouts) with the SDK's headers, as JSON text made here, and the server-sent
        events are read by a lean reader: `create` deep-copied the whole conversation to prepare
        it, and its stream built a pydantic model per event (together about a third of a step's
        CPU). Errors are the SDK's own: a status error from the SDK's constructor, a connection
        or timeout error of its types, an `error` event raised as the SDK raises it. Bedrock and
        Vertex clients rewrite the request from its parsed body, so they keep `create`."""
        if not _plain_client(self.client):
            stream = self.client.messages.create(**params, stream=True)
            _on_cancel(cancel, stream.close)
            with stream:
                for event in stream:
                    yield event.model_dump(exclude_none=True)
            return
        client = self.client
        body = json.dumps({**params, "stream": True}, ensure_ascii=False, separators=(",", ":")).encode()
        http = client._client
        request = http.build_request(
            "POST", self._url, headers=self._headers, content=body, timeout=client.timeout
        )
        try:
            response = http.send(request, stream=True)
        except httpx2.TimeoutException as exc:
            raise anthropic.APITimeoutError(request=request) from exc
        except Exception as exc:
            raise anthropic.APIConnectionError(request=request) from exc
        _on_cancel(cancel, response.close)
        try:
            if response.is_error:
                response.read()
                raise client._make_status_error_from_response(response)
            for name, data in _server_sent_events(response.iter_bytes()):
                if name is _READ_DONE:
                    yield _READ_DONE_EVENT
                    continue
                if name is None or name == "ping":
                    continue
                if name == "error":
                    try:
                        error_body: Any = json.loads(data)
                        message = f"{error_body}"
                    except ValueError:
                        error_body, message = data, data or f"Error code: {response.status_code}"
                    raise client._make_status_error(message, body=error_body, response=response)
                if data:
                    yield json.loads(data)
        finally:
            response.close()

    @cached_property
    def _url(self) -> Any:
        return self.client._prepare_url("/v1/messages")

    @cached_property
    def _headers(self) -> dict[str, str]:
        """What the SDK sends with every request (its version, auth, platform and custom headers),
        plus what it adds per attempt: the retry count and the timeouts."""
        timeout = self.client.timeout
        read = timeout.read if isinstance(timeout, httpx2.Timeout) else timeout
        headers = {
            "x-stainless-retry-count": "0",
            "x-stainless-timeout": str(read),
            **({"x-stainless-read-timeout": str(read)} if read is not None else {}),
        }
        headers.update((k, v) for k, v in self.client.default_headers.items() if isinstance(v, str))
        return headers

    def upstream_model(self, model: str) -> str:
        prefix = f"{self.name}/"
        return model[len(prefix) :] if self.name and model.startswith(prefix) else model

    @classmethod
    def shared(cls) -> "AnthropicProvider":
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls(
                    api_key=settings.ANTHROPIC_API_KEY or os.environ.get("ANTHROPIC_API_KEY"),
                    base_url=settings.ANTHROPIC_BASE_URL or os.environ.get("ANTHROPIC_BASE_URL"),
                )
            return cls._shared

    def complete(
        self, request: ModelRequest, *, listener: StreamListener, cancel: threading.Event
    ) -> ModelAnswer:
        if not self.api_key:
            raise ModelError(self.missing_key)
        params = request_params(request)
        params["model"] = self.upstream_model(request.model)
        named = params["model"] != request.model  # price and record the registry id, not the upstream one
        usage = ModelUsage()
        blocks: dict[int, dict[str, Any]] = {}
        partial_json: dict[int, list[str]] = {}
        stop_reason: str | None = None
        model = request.model
        hold = getattr(listener, "hold", None)
        read_done = getattr(listener, "read_done", None) if callable(hold) else None
        if read_done is not None:
            hold()  # type: ignore[misc]
        try:
            for event in self._events(params, cancel):
                if cancel.is_set():
                    raise ModelCancelled()
                kind = event.get("type")
                if kind is _READ_DONE:
                    if read_done is not None:
                        read_done()
                    continue
                if kind == "message_start":
                    message = event.get("message") or {}
                    model = model if named else (message.get("model") or model)
                    _read_usage(usage, message.get("usage"))
                elif kind == "content_block_start":
                    block = _without_nulls(event["content_block"])
                    index = event["index"]
                    if block["type"] == "tool_use":
                        block["input"] = {}
                        partial_json[index] = []
                    blocks[index] = block
                    listener.block_start(index, block["type"])
                elif kind == "content_block_delta":
                    delta = event["delta"]
                    index = event["index"]
                    block = blocks.get(index)
                    if block is None:
                        continue
                    delta_type = delta.get("type")
                    if delta_type == "text_delta":
                        block["text"] = block.get("text", "") + delta["text"]
                        listener.text_delta(index, delta["text"])
                    elif delta_type == "input_json_delta":
                        partial_json[index].append(delta["partial_json"])
                    elif delta_type == "thinking_delta":
                        block["thinking"] = block.get("thinking", "") + delta["thinking"]
                    elif delta_type == "signature_delta":
                        block["signature"] = delta["signature"]
                elif kind == "content_block_stop":
                    index = event["index"]
                    block = blocks.get(index)
                    if block is not None and block["type"] == "tool_use":
                        raw = "".join(partial_json.pop(index, []))
                        try:
                            block["input"] = json.loads(raw) if raw else {}
                        except ValueError:
                            raise ModelError(
                                "the model sent tool input that is not valid JSON", retryable=True
                            ) from None
                elif kind == "message_delta":
                    stop_reason = (event.get("delta") or {}).get("stop_reason") or stop_reason
                    _read_usage(usage, event.get("usage"))
        except ModelCancelled:
            raise
        except ModelError:
            raise
        except Exception as exc:
            if cancel.is_set():
                raise ModelCancelled() from None
            error = _model_error(exc)
            if self.name:
                error.message = f"Provider {self.name!r}: {error.message}"
                if self.api_key and len(self.api_key) >= 8:  # a server may echo the key back
                    error.message = error.message.replace(self.api_key, "[redacted]")
                error.args = (error.message,)
            raise error from None
        finally:
            if read_done is not None:
                read_done()
        if cancel.is_set():
            raise ModelCancelled()
        ordered = [blocks[index] for index in sorted(blocks)]
        return ModelAnswer(blocks=ordered, stop_reason=stop_reason, usage=usage, model=model)


def _plain_client(client: Any) -> bool:
    return type(client) is anthropic.Anthropic


def request_params(request: ModelRequest) -> dict[str, Any]:
    """Messages API parameters with cache breakpoints: the last tool, the system prompt (together
    the stable prefix) and the last block of the conversation (so the next turn reads it back)."""
    # Copy only what gets a cache mark: deep copies of a long conversation cost more than the rest.
    messages = list(request.messages)
    params: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens, "messages": messages}
    if request.tools:
        tools = list(request.tools)
        tools[-1] = {**tools[-1], "cache_control": CACHE}
        params["tools"] = tools
    if request.system:
        params["system"] = [{"type": "text", "text": request.system, "cache_control": CACHE}]
    if messages:
        last = messages[-1]
        content = last["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if content:
            content = [*content[:-1], {**content[-1], "cache_control": CACHE}]
        messages[-1] = {**last, "content": content}
    return params


def _read_usage(usage: ModelUsage, raw: dict[str, Any] | None) -> None:
    if not raw:
        return
    for name in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
        value = raw.get(name)
        if value is not None:
            setattr(usage, name, int(value))
    creation = raw.get("cache_creation")
    if isinstance(creation, dict) and (
        creation.get("ephemeral_5m_input_tokens") is not None
        or creation.get("ephemeral_1h_input_tokens") is not None
    ):
        usage.cache_creation_5m_tokens = int(creation.get("ephemeral_5m_input_tokens") or 0)
        usage.cache_creation_1h_tokens = int(creation.get("ephemeral_1h_input_tokens") or 0)
    elif raw.get("cache_creation_input_tokens") is not None:
        usage.cache_creation_5m_tokens = int(raw["cache_creation_input_tokens"])
        usage.cache_creation_1h_tokens = 0
    server_tools = raw.get("server_tool_use")
    if isinstance(server_tools, dict) and server_tools.get("web_search_requests") is not None:
        usage.web_search_requests = int(server_tools["web_search_requests"])


def _without_nulls(value: Any) -> Any:
    """A content block as the SDK's `model_dump(exclude_none=True)` gave it: no null fields."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _on_cancel(cancel: threading.Event, close: Any) -> None:
    on_cancel = getattr(cancel, "on_cancel", None)
    if on_cancel is not None:
        on_cancel(close)


# The marker `_server_sent_events` yields (as an event name) once it has handed on the events of one
# network read, and `_events` (as an event type): the listener may then send what that read brought.
_READ_DONE = "\0read-done"
_READ_DONE_EVENT = {"type": _READ_DONE}


def _server_sent_events(chunks: Iterator[bytes]) -> Iterator[tuple[str | None, str]]:
    """(event name, data) of each server-sent event, read as the SDK's SSEDecoder reads them: a
    line ends at \\n, \\r or \\r\\n (also split across chunks), a blank line ends an event, its
    data lines are joined with \\n, comments and other fields are skipped, and an event the stream
    ends before its blank line is dropped. After the events of each chunk: (`_READ_DONE`, "")."""
    name: str | None = None
    data: list[str] = []
    pending = b""
    done = False
    while not done:
        chunk = next(chunks, None)
        if chunk is None:
            lines, done = pending.splitlines(keepends=True), True
        else:
            lines = (pending + chunk if pending else chunk).splitlines(keepends=True)
            # The last line waits for the next chunk unless it ended at \\n (a lone \\r may be
            # half of \\r\\n).
            pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if line:
                name = _sse_field(line, name, data)
            elif name is not None or data:
                yield name, "\n".join(data)
                name, data = None, []
        yield _READ_DONE, ""


def _sse_field(line: bytes, name: str | None, data: list[str]) -> str | None:
    """Applies one field line: a data line is appended to `data`; returns the event name."""
    field, colon, value = line.partition(b":")
    if colon and value.startswith(b" "):
        value = value[1:]
    if field == b"data":
        data.append(value.decode())
    elif field == b"event":
        return value.decode()
    return name


def _model_error(exc: Exception) -> ModelError:
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = body.get("error", {}) if isinstance(body.get("error"), dict) else {}
        error_type = str(detail.get("type") or "")
        message = str(detail.get("message") or exc.message)
        if status == 429 or error_type == "rate_limit_error":
            return ModelError(f"The model is rate limited: {message}", kind="rate_limited", retryable=True)
        if status == 529 or error_type == "overloaded_error":
            return ModelError(f"The model is overloaded: {message}", kind="overloaded", retryable=True)
        if status >= 500 or error_type == "api_error":
            return ModelError(f"The model request failed ({status}): {message}", retryable=True)
        if status == 401:
            return ModelError(f"The model provider rejected the API key (401): {message}")
        if status == 403:
            return ModelError(f"The model provider refused the request (403): {message}")
        if status == 404:
            return ModelError(f"Unknown model or endpoint (404): {message}")
        if status == 413:
            return ModelError(f"The request is too large for the model (413): {message}", fatal=True)
        return ModelError(f"The model request was rejected ({status}): {message}", fatal=True)
    if isinstance(exc, (anthropic.APIConnectionError, anthropic.APITimeoutError)):
        return ModelError(f"Could not reach the model provider: {exc}", retryable=True)
    return ModelError(f"The model request failed: {type(exc).__name__}: {exc}", retryable=True)
