import threading
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass
class ModelRequest:
    model: str
    system: str | None
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    max_tokens: int


@dataclass
class ModelUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_5m_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    web_search_requests: int = 0

    @property
    def cache_creation_input_tokens(self) -> int:
        return self.cache_creation_5m_tokens + self.cache_creation_1h_tokens

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens

    def wire(self) -> dict[str, int]:
        """The span.model_request_end `model_usage` shape."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
        }


@dataclass
class ModelAnswer:
    # Messages API content blocks (text / tool_use / thinking) in answer order.
    blocks: list[dict[str, Any]]
    stop_reason: str | None
    usage: ModelUsage
    model: str
    text_event_ids: dict[int, str] = field(default_factory=dict)  # block index -> preview event id


ErrorKind = Literal["rate_limited", "overloaded", "failed"]


class ModelError(Exception):
    """A failed model call. `retryable` errors (429, 529, 5xx, connection) are retried by the harness.
    A `fatal` one (a request the model will never accept, such as a context over its window) ends
    the session; other failures (a missing or rejected API key, an unknown model) end the turn and
    leave the session usable once the operator fixes the configuration."""

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind = "failed",
        retryable: bool = False,
        fatal: bool = False,
        usage: ModelUsage | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retryable = retryable
        self.fatal = fatal
        self.usage = usage or ModelUsage()


class ModelCancelled(Exception):
    """The call was stopped by an interrupt."""


class StreamListener(Protocol):
    """What a provider tells while it streams. A listener may also have `hold()` and `read_done()`: a
    provider that calls `hold()` once promises `read_done()` after handling each network read and at
    the end, so the listener may send what one read brought together (`harness.services._Previews`)."""

    def block_start(self, index: int, block_type: str) -> None: ...
    def text_delta(self, index: int, text: str) -> None: ...


class Provider(Protocol):
    def complete(
        self, request: ModelRequest, *, listener: StreamListener, cancel: threading.Event
    ) -> ModelAnswer: ...


class CancelToken(threading.Event):
    """An Event that also runs abort callbacks when set (to close a blocking model stream)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Any] = []
        self._lock = threading.Lock()

    def on_cancel(self, callback: Any) -> None:
        with self._lock:
            self._callbacks.append(callback)
        if self.is_set():
            callback()

    def clear_callbacks(self) -> None:
        with self._lock:
            self._callbacks.clear()

    def set(self) -> None:
        super().set()
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # closing a stream twice or from another thread may complain
                pass
