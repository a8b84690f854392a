"""The wire shapes of sessions, threads and the events clients send (spec 5, 7.2, 9).

Client events are checked by hand rather than with pydantic models so that every rejection names
the exact field (`events[2].content[0].source.type`) and the stored payload holds only the fields
the spec defines, normalized (defaults filled in, unknown keys dropped).
"""

from typing import Any

from api.errors import bad_request

SESSION_STATUSES = ("rescheduling", "running", "idle", "terminated")

CLIENT_EVENT_TYPES = (
    "user.message",
    "user.interrupt",
    "user.tool_confirmation",
    "user.custom_tool_result",
    "user.define_outcome",
    "user.tool_result",
    "system.message",
)
INITIAL_EVENT_TYPES = ("user.message", "user.define_outcome")
# Events that give an idle session something to do (user.interrupt never starts a session).
ACTIONABLE_TYPES = frozenset(
    {
        "user.message",
        "user.define_outcome",
        "user.tool_confirmation",
        "user.custom_tool_result",
        "user.tool_result",
    }
)
# Stored with processed_at set: the server acts on them when they arrive (spec 7.1).
PROCESSED_ON_RECEIPT = frozenset({"user.define_outcome", "user.custom_tool_result", "user.tool_result"})
# Accepted while a session is paused at its budget (spec 7.1 "settle" events).
SETTLE_TYPES = frozenset(
    {"user.tool_confirmation", "user.tool_result", "user.custom_tool_result", "user.interrupt"}
)
_BEFORE_SYSTEM = frozenset(
    {"user.message", "user.tool_result", "user.custom_tool_result", "user.tool_confirmation"}
)
DELTA_TYPES = ("agent.message", "agent.thinking")
MAX_INITIAL_EVENTS = 50
MAX_OUTCOME_ITERATIONS = 20
DEFAULT_OUTCOME_ITERATIONS = 3


def _persisted_types() -> frozenset[str]:
    """Every type `types[]` may name: spec/event-types.txt minus the stream-only previews and
    session.deleted (which the SDK's filter literal leaves out)."""
    names = """
    user.message user.interrupt user.tool_confirmation user.custom_tool_result user.define_outcome
    user.tool_result system.message agent.custom_tool_use agent.mcp_tool_result agent.mcp_tool_use
    agent.message agent.thinking agent.thread_context_compacted agent.thread_message_received
    agent.thread_message_sent agent.tool_result agent.tool_use session.error session.status_idle
    session.status_rescheduled session.status_running session.status_terminated session.thread_created
    session.thread_status_idle session.thread_status_rescheduled session.thread_status_running
    session.thread_status_terminated session.updated session.usage span.model_request_end
    span.model_request_start span.outcome_evaluation_end span.outcome_evaluation_ongoing
    span.outcome_evaluation_start workflow_run.created workflow_run.error workflow_run.phase_ended
    workflow_run.phase_started workflow_run.status_ended workflow_run.status_idle workflow_run.status_running
    """
    return frozenset(names.split())


FILTERABLE_EVENT_TYPES = _persisted_types()


# --- small checkers ----------------------------------------------------------------------------


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"{where}: expected an object.")
    return value


def _str(value: Any, where: str, *, allow_empty: bool = False, max_len: int | None = None) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{where}: expected a string.")
    if not allow_empty and not value:
        raise bad_request(f"{where}: must not be empty.")
    if max_len is not None and len(value) > max_len:
        raise bad_request(f"{where}: must be at most {max_len} characters.")
    return value


def _required(body: dict[str, Any], key: str, where: str) -> Any:
    if key not in body or body[key] is None:
        raise bad_request(f"{where}.{key}: field required.")
    return body[key]


def _list(value: Any, where: str, *, min_items: int = 0, max_items: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise bad_request(f"{where}: expected a list.")
    if len(value) < min_items:
        raise bad_request(f"{where}: needs at least {min_items} item(s).")
    if max_items is not None and len(value) > max_items:
        raise bad_request(f"{where}: at most {max_items} items are allowed, got {len(value)}.")
    return value


def _optional_bool(body: dict[str, Any], key: str, where: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"{where}.{key}: expected a boolean.")
    return value


# --- content blocks ------------------------------------------------------------------------------


def _source(value: Any, where: str, kinds: tuple[str, ...]) -> dict[str, Any]:
    src = _obj(value, where)
    kind = src.get("type")
    if kind not in kinds:
        raise bad_request(f"{where}.type: must be one of {', '.join(kinds)}, got {kind!r}.")
    if kind == "base64":
        return {
            "type": "base64",
            "data": _str(_required(src, "data", where), f"{where}.data"),
            "media_type": _str(_required(src, "media_type", where), f"{where}.media_type"),
        }
    if kind == "url":
        return {"type": "url", "url": _str(_required(src, "url", where), f"{where}.url")}
    if kind == "file":
        return {"type": "file", "file_id": _str(_required(src, "file_id", where), f"{where}.file_id")}
    media_type = _required(src, "media_type", where)
    if media_type != "text/plain":
        raise bad_request(f"{where}.media_type: a text source must be 'text/plain'.")
    return {
        "type": "text",
        "data": _str(_required(src, "data", where), f"{where}.data", allow_empty=True),
        "media_type": "text/plain",
    }


def _block(value: Any, where: str, kinds: tuple[str, ...]) -> dict[str, Any]:
    block = _obj(value, where)
    kind = block.get("type")
    if kind == "redacted":
        raise bad_request(f"{where}.type: 'redacted' blocks are produced by the server and cannot be sent.")
    if kind not in kinds:
        raise bad_request(f"{where}.type: must be one of {', '.join(kinds)}, got {kind!r}.")
    if kind == "text":
        return {
            "type": "text",
            "text": _str(_required(block, "text", where), f"{where}.text", allow_empty=True),
        }
    if kind == "image":
        return {
            "type": "image",
            "source": _source(
                _required(block, "source", where), f"{where}.source", ("base64", "url", "file")
            ),
        }
    if kind == "document":
        out: dict[str, Any] = {
            "type": "document",
            "source": _source(
                _required(block, "source", where), f"{where}.source", ("base64", "text", "url", "file")
            ),
        }
        for key in ("title", "context"):
            if block.get(key) is not None:
                out[key] = _str(block[key], f"{where}.{key}", allow_empty=True)
        return out
    # search_result
    citations = _obj(_required(block, "citations", where), f"{where}.citations")
    enabled = citations.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise bad_request(f"{where}.citations.enabled: expected a boolean.")
    inner = _list(_required(block, "content", where), f"{where}.content")
    return {
        "type": "search_result",
        "source": _str(_required(block, "source", where), f"{where}.source"),
        "title": _str(_required(block, "title", where), f"{where}.title", allow_empty=True),
        "content": [_block(item, f"{where}.content[{i}]", ("text",)) for i, item in enumerate(inner)],
        "citations": {"enabled": bool(enabled)},
    }


def _result_content(body: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if body.get("content") is None:
        return []
    items = _list(body["content"], f"{where}.content")
    kinds = ("text", "image", "document", "search_result")
    return [_block(item, f"{where}.content[{i}]", kinds) for i, item in enumerate(items)]


# --- client events -------------------------------------------------------------------------------


def check_client_event(
    value: Any, where: str, *, allowed: tuple[str, ...] = CLIENT_EVENT_TYPES
) -> dict[str, Any]:
    """Validate one client event and return its normalized body (`type` plus the spec's fields).
    Cross-row checks (tool_use ids, thread ids, the environment kind) are the service's job."""
    body = _obj(value, where)
    kind = body.get("type")
    if not isinstance(kind, str) or not kind:
        raise bad_request(f"{where}.type: field required.")
    if kind not in CLIENT_EVENT_TYPES:
        raise bad_request(
            f"{where}.type: unknown event type {kind!r}; clients may send {', '.join(CLIENT_EVENT_TYPES)}."
        )
    if kind not in allowed:
        raise bad_request(f"{where}.type: {kind!r} is not allowed here; only {', '.join(allowed)}.")
    if kind == "user.message":
        content = _list(_required(body, "content", where), f"{where}.content", min_items=1)
        blocks = [
            _block(item, f"{where}.content[{i}]", ("text", "image", "document"))
            for i, item in enumerate(content)
        ]
        return {"type": kind, "content": blocks}
    if kind == "user.interrupt":
        out: dict[str, Any] = {"type": kind}
        if body.get("session_thread_id") is not None:
            out["session_thread_id"] = _str(body["session_thread_id"], f"{where}.session_thread_id")
        return out
    if kind == "user.tool_confirmation":
        result = _required(body, "result", where)
        if result not in ("allow", "deny"):
            raise bad_request(f"{where}.result: must be 'allow' or 'deny', got {result!r}.")
        out = {
            "type": kind,
            "tool_use_id": _str(_required(body, "tool_use_id", where), f"{where}.tool_use_id"),
            "result": result,
        }
        if body.get("deny_message") is not None:
            if result != "deny":
                raise bad_request(f"{where}.deny_message: only allowed when result is 'deny'.")
            out["deny_message"] = _str(body["deny_message"], f"{where}.deny_message", allow_empty=True)
        return out
    if kind == "user.custom_tool_result":
        return {
            "type": kind,
            "custom_tool_use_id": _str(
                _required(body, "custom_tool_use_id", where), f"{where}.custom_tool_use_id"
            ),
            "content": _result_content(body, where),
            "is_error": bool(_optional_bool(body, "is_error", where)),
        }
    if kind == "user.tool_result":
        return {
            "type": kind,
            "tool_use_id": _str(_required(body, "tool_use_id", where), f"{where}.tool_use_id"),
            "content": _result_content(body, where),
            "is_error": bool(_optional_bool(body, "is_error", where)),
        }
    if kind == "user.define_outcome":
        rubric = _obj(_required(body, "rubric", where), f"{where}.rubric")
        if rubric.get("type") == "text":
            rubric_out = {
                "type": "text",
                "content": _str(_required(rubric, "content", f"{where}.rubric"), f"{where}.rubric.content"),
            }
        elif rubric.get("type") == "file":
            rubric_out = {
                "type": "file",
                "file_id": _str(_required(rubric, "file_id", f"{where}.rubric"), f"{where}.rubric.file_id"),
            }
        else:
            raise bad_request(f"{where}.rubric.type: must be 'text' or 'file', got {rubric.get('type')!r}.")
        iterations = body.get("max_iterations")
        if iterations is None:
            iterations = DEFAULT_OUTCOME_ITERATIONS
        if (
            not isinstance(iterations, int)
            or isinstance(iterations, bool)
            or not 1 <= iterations <= MAX_OUTCOME_ITERATIONS
        ):
            raise bad_request(
                f"{where}.max_iterations: must be an integer from 1 to {MAX_OUTCOME_ITERATIONS}."
            )
        return {
            "type": kind,
            "description": _str(_required(body, "description", where), f"{where}.description"),
            "rubric": rubric_out,
            "max_iterations": iterations,
        }
    # system.message
    content = _list(_required(body, "content", where), f"{where}.content", min_items=1, max_items=1000)
    return {
        "type": kind,
        "content": [_block(item, f"{where}.content[{i}]", ("text",)) for i, item in enumerate(content)],
    }


def check_client_events(
    value: Any, where: str, *, allowed: tuple[str, ...] = CLIENT_EVENT_TYPES, max_items: int | None = None
) -> list[dict[str, Any]]:
    items = _list(value, where, min_items=1, max_items=max_items)
    events = [check_client_event(item, f"{where}[{i}]", allowed=allowed) for i, item in enumerate(items)]
    system = [i for i, event in enumerate(events) if event["type"] == "system.message"]
    if len(system) > 1:
        raise bad_request(f"{where}[{system[1]}]: at most one system.message is allowed per request.")
    if system and system[0] != len(events) - 1:
        raise bad_request(f"{where}[{system[0]}]: a system.message must be the last event of the request.")
    if system and (system[0] == 0 or events[system[0] - 1]["type"] not in _BEFORE_SYSTEM):
        raise bad_request(
            f"{where}[{system[0]}]: a system.message must follow a user.message or a tool result "
            "in the same request."
        )
    return events


def check_budget(value: Any, where: str = "budget") -> dict[str, Any]:
    budget = _obj(value, where)
    if budget.get("type") != "limit":
        raise bad_request(f"{where}.type: must be 'limit'.")
    cost = _obj(_required(budget, "max_list_cost", where), f"{where}.max_list_cost")
    amount = cost.get("amount")
    if not isinstance(amount, str) or not amount.isdigit() or not amount.isascii():
        raise bad_request(
            f"{where}.max_list_cost.amount: must be a string of digits (minor units), got {amount!r}."
        )
    if cost.get("currency", "USD") != "USD":
        raise bad_request(f"{where}.max_list_cost.currency: only 'USD' is supported.")
    return {"type": "limit", "max_list_cost": {"amount": str(int(amount)), "currency": "USD"}}
