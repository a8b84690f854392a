"""Any OpenAI-compatible Chat Completions server (OpenAI, vLLM, Ollama, LM Studio, OpenRouter, ...)
through the official `openai` client.

The harness speaks Messages API shapes (system, tools with input_schema, content blocks); this
module translates a request into Chat Completions messages and the streamed chunks back into
content blocks, so the rest of the loop cannot tell the providers apart."""

import hashlib
import json
import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import openai
from django.conf import settings

from harness.providers.base import (
    ModelAnswer,
    ModelCancelled,
    ModelError,
    ModelRequest,
    ModelUsage,
    StreamListener,
)

FINISH_REASONS = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}
NO_IMAGES = "[an image was returned here, but this model does not accept images]"
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # what Chat Completions accepts


def function_name(name: str) -> str:
    """The name a tool goes by on the wire: MCP tool names may exceed the 64 characters Chat
    Completions allows, so long or unusual ones get a stable shortened alias."""
    if FUNCTION_NAME.match(name):
        return name
    safe = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:55]
    return f"{safe}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


class OpenAIProvider:
    """One configured OpenAI-compatible server. `name` is the registry name: model ids reach it
    as `<name>/<model>` and the part after the slash is what the server is asked for."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str | None,
        api_key: str | None,
        headers: dict[str, str] | None = None,
        accepts_images: Callable[[str], bool] | None = None,
    ) -> None:
        self.name = name
        self.api_key = api_key
        self.base_url = base_url
        self.accepts_images = accepts_images or (lambda model: True)
        self.client = openai.OpenAI(
            api_key=api_key or "none",  # local servers (Ollama, vLLM) often need no key at all
            base_url=base_url,
            default_headers=headers or None,
            max_retries=0,  # the harness retries, visibly (session.status_rescheduled)
            timeout=settings.GALLEY_MODEL_TIMEOUT_SECONDS,
        )

    def label(self) -> str:
        host = urlparse(self.base_url or "https://api.openai.com").netloc
        return f"provider {self.name!r} ({host})"

    def upstream_model(self, model: str) -> str:
        prefix = f"{self.name}/"
        return model[len(prefix) :] if model.startswith(prefix) else model

    def complete(
        self, request: ModelRequest, *, listener: StreamListener, cancel: threading.Event
    ) -> ModelAnswer:
        upstream = self.upstream_model(request.model)
        params = request_params(request, upstream, images=self.accepts_images(request.model))
        names = {function_name(tool["name"]): tool["name"] for tool in request.tools}
        if self.base_url is None or "api.openai.com" in self.base_url:
            # OpenAI's own API refuses max_tokens for its reasoning models; compatible servers vary.
            params["max_completion_tokens"] = params.pop("max_tokens")
        usage = ModelUsage()
        blocks: dict[int, dict[str, Any]] = {}
        arguments: dict[int, list[str]] = {}
        tool_blocks: dict[int, int] = {}  # the chunk's tool_calls[].index -> our block index
        thinking_at: int | None = None
        text_at: int | None = None
        finish: str | None = None
        try:
            stream = self.client.chat.completions.create(**params, stream=True)
            on_cancel = getattr(cancel, "on_cancel", None)
            if on_cancel is not None:
                on_cancel(stream.close)
            with stream:
                for chunk in stream:
                    if cancel.is_set():
                        raise ModelCancelled()
                    if chunk.usage is not None:
                        _read_usage(usage, chunk.usage)
                    for choice in chunk.choices or []:
                        if choice.index != 0:
                            continue
                        delta = choice.delta
                        reasoning = _reasoning(delta)
                        if reasoning:
                            if thinking_at is None:
                                thinking_at = len(blocks)
                                blocks[thinking_at] = {"type": "thinking", "thinking": ""}
                                listener.block_start(thinking_at, "thinking")
                            blocks[thinking_at]["thinking"] += reasoning
                        if delta.content:
                            if text_at is None:
                                text_at = len(blocks)
                                blocks[text_at] = {"type": "text", "text": ""}
                                listener.block_start(text_at, "text")
                            blocks[text_at]["text"] += delta.content
                            listener.text_delta(text_at, delta.content)
                        for call in delta.tool_calls or []:
                            at = tool_blocks.get(call.index)
                            if at is None:
                                at = tool_blocks[call.index] = len(blocks)
                                blocks[at] = {"type": "tool_use", "id": "", "name": "", "input": {}}
                                arguments[at] = []
                                listener.block_start(at, "tool_use")
                            block = blocks[at]
                            if call.id and not block["id"]:
                                block["id"] = call.id
                            function = call.function
                            if function is not None:
                                if function.name and not block["name"]:
                                    block["name"] = function.name
                                if function.arguments:
                                    arguments[at].append(function.arguments)
                        if choice.finish_reason:
                            finish = choice.finish_reason
        except ModelCancelled:
            raise
        except ModelError:
            raise
        except Exception as exc:
            if cancel.is_set():
                raise ModelCancelled() from None
            raise self._redacted(self._error(exc)) from None
        if cancel.is_set():
            raise ModelCancelled()
        if finish is None:
            raise ModelError(
                f"The model stream from {self.label()} ended before the model finished its answer",
                retryable=True,
                usage=usage,
            )
        for at, parts in arguments.items():
            block = blocks[at]
            raw = "".join(parts).strip()
            try:
                value = json.loads(raw) if raw else {}
            except ValueError:
                value = None
            if not isinstance(value, dict):
                raise ModelError(
                    f"The model at {self.label()} sent arguments for tool {block['name']!r} that are "
                    "not a valid JSON object (a malformed stream)",
                    retryable=True,
                    usage=usage,
                )
            block["input"] = value
            block["name"] = names.get(block["name"], block["name"])
            if not block["name"]:
                raise ModelError(
                    f"The model at {self.label()} sent a tool call without a name (a malformed stream)",
                    retryable=True,
                    usage=usage,
                )
        ordered = [blocks[index] for index in sorted(blocks)]
        return ModelAnswer(
            blocks=ordered,
            stop_reason=FINISH_REASONS.get(finish, finish),
            usage=usage,
            model=request.model,
        )

    def models_list(self) -> list[str]:
        """The server's GET /models (for "list from the server" and the connection test)."""
        try:
            # A short timeout: the console's model picker waits on this.
            return sorted(model.id for model in self.client.with_options(timeout=10).models.list())
        except Exception as exc:
            raise self._redacted(self._error(exc)) from None

    def _redacted(self, error: ModelError) -> ModelError:
        # A server may echo the key in its error text; the message goes to the event log.
        if self.api_key and len(self.api_key) >= 8 and self.api_key in error.message:
            error.message = error.message.replace(self.api_key, "[redacted]")
            error.args = (error.message,)
        return error

    def _error(self, exc: Exception) -> ModelError:
        where = self.label()
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            body = exc.body if isinstance(exc.body, dict) else {}
            message = str(body.get("message") or exc.message)
            code = str(body.get("code") or "")
            if status == 429:
                return ModelError(f"{where} is rate limited: {message}", kind="rate_limited", retryable=True)
            if status in (503, 529):
                return ModelError(
                    f"{where} is overloaded ({status}): {message}", kind="overloaded", retryable=True
                )
            if status >= 500:
                return ModelError(f"The request to {where} failed ({status}): {message}", retryable=True)
            if status == 401:
                return ModelError(f"{where} rejected the API key (401): {message}")
            if status == 403:
                return ModelError(f"{where} refused the request (403): {message}")
            if status == 404:
                return ModelError(f"{where} does not serve this model or endpoint (404): {message}")
            if code == "context_length_exceeded" or status == 413:
                return ModelError(f"The request is too large for the model at {where}: {message}", fatal=True)
            # Compatible servers answer an unknown model or an unsupported parameter with a 400 or
            # 422: the turn ends and the session stays usable once the configuration is fixed.
            return ModelError(f"{where} rejected the request ({status}): {message}")
        if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)):
            return ModelError(f"Could not reach {where}: {exc}", retryable=True)
        if isinstance(exc, openai.APIError):
            return ModelError(f"The stream from {where} failed: {exc.message}", retryable=True)
        return ModelError(f"The request to {where} failed: {type(exc).__name__}: {exc}", retryable=True)


def _reasoning(delta: Any) -> str:
    """Reasoning text: vLLM and DeepSeek send `reasoning_content`, OpenRouter and Ollama `reasoning`."""
    extra = getattr(delta, "model_extra", None) or {}
    for key in ("reasoning_content", "reasoning"):
        value = extra.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _read_usage(usage: ModelUsage, raw: Any) -> None:
    prompt = int(getattr(raw, "prompt_tokens", 0) or 0)
    details = getattr(raw, "prompt_tokens_details", None)
    cached = int(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    cached = min(cached, prompt)
    # Chat Completions counts cached tokens inside prompt_tokens; the Messages API shape keeps them apart.
    usage.input_tokens = prompt - cached
    usage.cache_read_input_tokens = cached
    usage.output_tokens = int(getattr(raw, "completion_tokens", 0) or 0)


# --- Messages API shapes -> Chat Completions ---------------------------------------------------------


def request_params(request: ModelRequest, model: str, *, images: bool = True) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if message["role"] == "assistant":
            messages.extend(_assistant(content))
        else:
            messages.extend(_user(content, images=images))
    params: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        params["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": function_name(tool["name"]),
                    "description": tool.get("description") or "",
                    "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
                },
            }
            for tool in request.tools
        ]
    return params


def _assistant(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    texts = [b["text"] for b in blocks if b.get("type") == "text" and b.get("text")]
    calls = [
        {
            "id": b["id"],
            "type": "function",
            "function": {"name": function_name(b["name"]), "arguments": json.dumps(b.get("input") or {})},
        }
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    if not texts and not calls:
        return []  # thinking only: Chat Completions has no place for it
    out: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts) if texts else None}
    if calls:
        out["tool_calls"] = calls
    return [out]


def _user(blocks: list[dict[str, Any]], *, images: bool) -> list[dict[str, Any]]:
    """Tool results become `tool` messages (which carry text only), in the order of the calls; the
    images they returned, and the turn's own content, follow as one user message."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if block.get("type") == "tool_result":
            texts: list[str] = []
            for item in block.get("content") or []:
                if item.get("type") == "image":
                    if images and not parts:
                        parts.append(
                            {"type": "text", "text": f"Images returned by tool call {block['tool_use_id']}:"}
                        )
                    parts.extend(_part(item, images=images))
                else:
                    texts.extend(p["text"] for p in _part(item, images=images) if p.get("type") == "text")
            text = "\n".join(texts) or ("(error)" if block.get("is_error") else "(no output)")
            if block.get("is_error"):
                text = f"Error: {text}"
            out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        else:
            parts.extend(_part(block, images=images))
    if parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _part(block: dict[str, Any], *, images: bool) -> list[dict[str, Any]]:
    kind = block.get("type")
    if kind == "text":
        return [{"type": "text", "text": block.get("text", "")}]
    if kind == "image":
        if not images:
            return [{"type": "text", "text": NO_IMAGES}]
        source = block.get("source") or {}
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
        else:
            url = str(source.get("url") or "")
        return [{"type": "image_url", "image_url": {"url": url}}]
    if kind == "document":
        source = block.get("source") or {}
        title = block.get("title") or "document"
        if source.get("type") == "text":
            return [{"type": "text", "text": f"[{title}]\n{source.get('data', '')}"}]
        return [{"type": "text", "text": f"[{title}: this document type cannot be read by this model]"}]
    if kind == "search_result":
        inner = "\n".join(c.get("text", "") for c in block.get("content") or [] if c.get("type") == "text")
        return [{"type": "text", "text": f"[{block.get('title', '')}] {block.get('source', '')}\n{inner}"}]
    return []
