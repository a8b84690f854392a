"""The Anthropic Messages API provider: streaming through the official SDK, with prompt caching
marks on the stable prefix (tools, system) and on the conversation tail."""

import json
import os
import threading
from typing import Any

import anthropic
from anthropic import Stream
from anthropic.types import Message, RawMessageStreamEvent
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

    def _stream(self, params: dict[str, Any]) -> Any:
        """`messages.create(stream=True)`. On the plain client the body goes as JSON text made here:
        `create` deep-copies the whole conversation to prepare it (a tenth of a step's CPU in a long
        session) and encodes it in Python. Bedrock and Vertex clients rewrite the request from its
        parsed body, so they keep `create`."""
        if not _plain_client(self.client):
            return self.client.messages.create(**params, stream=True)
        body = json.dumps({**params, "stream": True}, ensure_ascii=False, separators=(",", ":"))
        return self.client.post(
            "/v1/messages",
            content=body.encode(),
            cast_to=Message,
            stream=True,
            stream_cls=Stream[RawMessageStreamEvent],
        )

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
        try:
            stream = self._stream(params)
            on_cancel = getattr(cancel, "on_cancel", None)
            if on_cancel is not None:
                on_cancel(stream.close)
            with stream:
                for event in stream:
                    if cancel.is_set():
                        raise ModelCancelled()
                    kind = event.type
                    if kind == "message_start":
                        model = model if named else (event.message.model or model)
                        _read_usage(usage, event.message.usage)
                    elif kind == "content_block_start":
                        block = event.content_block.model_dump(exclude_none=True)
                        if block["type"] == "tool_use":
                            block["input"] = {}
                            partial_json[event.index] = []
                        blocks[event.index] = block
                        listener.block_start(event.index, block["type"])
                    elif kind == "content_block_delta":
                        delta = event.delta
                        block = blocks.get(event.index)
                        if block is None:
                            continue
                        if delta.type == "text_delta":
                            block["text"] = block.get("text", "") + delta.text
                            listener.text_delta(event.index, delta.text)
                        elif delta.type == "input_json_delta":
                            partial_json[event.index].append(delta.partial_json)
                        elif delta.type == "thinking_delta":
                            block["thinking"] = block.get("thinking", "") + delta.thinking
                        elif delta.type == "signature_delta":
                            block["signature"] = delta.signature
                    elif kind == "content_block_stop":
                        block = blocks.get(event.index)
                        if block is not None and block["type"] == "tool_use":
                            raw = "".join(partial_json.pop(event.index, []))
                            try:
                                block["input"] = json.loads(raw) if raw else {}
                            except ValueError:
                                raise ModelError(
                                    "the model sent tool input that is not valid JSON", retryable=True
                                ) from None
                    elif kind == "message_delta":
                        stop_reason = event.delta.stop_reason or stop_reason
                        _read_usage(usage, event.usage)
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


def _read_usage(usage: ModelUsage, raw: Any) -> None:
    if raw is None:
        return
    for name in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
        value = getattr(raw, name, None)
        if value is not None:
            setattr(usage, name, int(value))
    creation = getattr(raw, "cache_creation", None)
    if creation is not None and (
        getattr(creation, "ephemeral_5m_input_tokens", None) is not None
        or getattr(creation, "ephemeral_1h_input_tokens", None) is not None
    ):
        usage.cache_creation_5m_tokens = int(getattr(creation, "ephemeral_5m_input_tokens", 0) or 0)
        usage.cache_creation_1h_tokens = int(getattr(creation, "ephemeral_1h_input_tokens", 0) or 0)
    elif getattr(raw, "cache_creation_input_tokens", None) is not None:
        usage.cache_creation_5m_tokens = int(raw.cache_creation_input_tokens)
        usage.cache_creation_1h_tokens = 0
    server_tools = getattr(raw, "server_tool_use", None)
    if server_tools is not None and getattr(server_tools, "web_search_requests", None) is not None:
        usage.web_search_requests = int(server_tools.web_search_requests)


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
