"""Outcomes (spec 7.5): `user.define_outcome` gives the agent a task with a rubric; after each of
the agent's turns a grader judges the work and either ends the outcome or sends feedback back.

Everything is derived from the log. An outcome is open from its `user.define_outcome` until a
`span.outcome_evaluation_end` with a terminal result. When the agent ends a turn while its
outcome is open, the loop calls `outcome_evaluate`: a separate model request through the same
provider interface with its own context (the grader's system prompt, the outcome, the rubric, a
transcript of the work and the files in the outputs directory; never the agent's system prompt),
recorded between `span.outcome_evaluation_start` and `_end`, with a
`span.outcome_evaluation_ongoing` heartbeat every GALLEY_OUTCOME_HEARTBEAT_SECONDS while the grader
works. A `needs_revision` end is rendered into the agent's context as the next user turn
(outcome_prompts.evaluation_turn), so the agent revises with no client event; after the last
allowed evaluation the verdict is `max_iterations_reached` and one acknowledgement turn runs before
the session idles."""

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from api.errors import bad_request
from harness import budget
from harness.outcome_prompts import GRADER_SYSTEM, grader_request_text
from harness.providers import ModelError, ModelRequest, ModelUsage, provider_for
from harness.providers.base import ModelCancelled
from sessions.models import Event, Session
from sessions.services import NewEvent, events_append

log = logging.getLogger(__name__)

TERMINAL = ("satisfied", "max_iterations_reached", "failed", "interrupted")
VERDICTS = ("satisfied", "needs_revision", "failed")
TRANSCRIPT_MAX_CHARS = 60_000
TOOL_TEXT_MAX_CHARS = 2_000
OUTPUT_FILES_MAX = 10
OUTPUT_FILE_MAX_BYTES = 16_384


@dataclass
class OpenOutcome:
    define: Event
    iteration: int  # the evaluation to run next (0-based)
    open_start: Event | None  # an evaluation start without an end (its worker died)

    @property
    def outcome_id(self) -> str:
        return str(self.define.payload.get("outcome_id", ""))

    @property
    def max_iterations(self) -> int:
        return int(self.define.payload.get("max_iterations") or 3)


def outcome_open(events: list[Event]) -> OpenOutcome | None:
    """The session's latest outcome, if it has not reached a terminal result."""
    define = next((e for e in reversed(events) if e.type == "user.define_outcome"), None)
    if define is None:
        return None
    outcome_id = define.payload.get("outcome_id")
    iteration = 0
    open_start: Event | None = None
    for event in events:
        if event.seq <= define.seq or event.payload.get("outcome_id") != outcome_id:
            continue
        if event.type == "span.outcome_evaluation_start":
            open_start = event
        elif event.type == "span.outcome_evaluation_end":
            if event.payload.get("result") in TERMINAL:
                return None
            open_start = None
            iteration = int(event.payload.get("iteration", iteration)) + 1
    return OpenOutcome(define=define, iteration=iteration, open_start=open_start)


def outcome_check_define(*, session: Session, event: dict[str, Any], where: str) -> None:
    """Cross-row checks of a `user.define_outcome` before it is stored: its rubric file must be a
    readable file of the workspace, and the session must not be working on another outcome."""
    rubric = event.get("rubric") or {}
    if rubric.get("type") == "file":
        from files.models import File

        file = File.objects.filter(workspace_id=session.workspace_id, pk=rubric.get("file_id")).first()
        if file is None:
            raise bad_request(f"{where}.rubric.file_id: file {rubric.get('file_id')!r} was not found.")
        if file.is_expired() or not file.path.is_file():
            raise bad_request(f"{where}.rubric.file_id: file {file.pk!r} has no content to read.")
    events = list(
        Event.objects.filter(
            session=session,
            thread=None,
            type__in=("user.define_outcome", "span.outcome_evaluation_start", "span.outcome_evaluation_end"),
        ).order_by("seq")
    )
    current = outcome_open(events)
    if current is not None:
        raise bad_request(
            f"{where}: outcome {current.outcome_id!r} is still being worked on; wait for its result "
            "or interrupt the session before defining another."
        )


# --- the grader ------------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if not isinstance(content, list):
        return ""
    return "\n".join(
        str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text"
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def transcript(events: list[Event], since_seq: int) -> str:
    """The agent's work since the outcome was defined, as plain text for the grader."""
    lines: list[str] = []
    for event in events:
        if event.seq <= since_seq:
            continue
        payload = event.payload
        if event.type == "user.message" and event.processed_at is not None:
            lines.append(f"[user] {_text_of(payload.get('content'))}")
        elif event.type == "agent.message":
            lines.append(f"[agent] {_text_of(payload.get('content'))}")
        elif event.type in ("agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use"):
            tool_input = json.dumps(payload.get("input") or {}, ensure_ascii=False)
            lines.append(f"[agent calls {payload.get('name', '')}] {_clip(tool_input, TOOL_TEXT_MAX_CHARS)}")
        elif event.type in ("agent.tool_result", "agent.mcp_tool_result", "user.custom_tool_result"):
            status = "error" if payload.get("is_error") else "result"
            lines.append(f"[tool {status}] {_clip(_text_of(payload.get('content')), TOOL_TEXT_MAX_CHARS)}")
        elif event.type == "span.outcome_evaluation_end":
            lines.append(f"[earlier evaluation: {payload.get('result')}] {payload.get('explanation', '')}")
    text = "\n".join(lines) or "(the agent did nothing yet)"
    if len(text) > TRANSCRIPT_MAX_CHARS:
        text = "(earlier work omitted)\n" + text[-TRANSCRIPT_MAX_CHARS:]
    return text


def outputs(session_id: str) -> list[tuple[str, str]]:
    """The files the agent left in its outputs directory (captured as session-scoped files)."""
    from files.models import File

    found: list[tuple[str, str]] = []
    for file in File.objects.filter(scope_id=session_id).order_by("filename")[:OUTPUT_FILES_MAX]:
        try:
            with open(file.path, "rb") as handle:
                data = handle.read(OUTPUT_FILE_MAX_BYTES + 1)
        except OSError:
            continue
        text = data[:OUTPUT_FILE_MAX_BYTES].decode("utf-8", errors="replace")
        if len(data) > OUTPUT_FILE_MAX_BYTES:
            text += "\n(truncated)"
        found.append((file.filename, text))
    return found


class _Silent:
    """The grader's answer is not previewed on the stream."""

    def block_start(self, index: int, block_type: str) -> None:
        pass

    def text_delta(self, index: int, text: str) -> None:
        pass


_JSON = re.compile(r"\{.*\}", re.DOTALL)


def parse_verdict(text: str) -> tuple[str, str]:
    """The grader's (result, explanation). An answer that is not the asked-for JSON is `failed`,
    with the grader's own words as the explanation."""
    match = _JSON.search(text or "")
    if match:
        try:
            data = json.loads(match.group(0))
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("result") in VERDICTS:
            return str(data["result"]), str(data.get("explanation") or "")
    return "failed", "The grader's answer was not a verdict: " + _clip((text or "").strip(), 2_000)


def _end(
    outcome: OpenOutcome, start_id: str, iteration: int, result: str, explanation: str, usage: ModelUsage
) -> NewEvent:
    return NewEvent(
        "span.outcome_evaluation_end",
        {
            "outcome_id": outcome.outcome_id,
            "iteration": iteration,
            "outcome_evaluation_start_id": start_id,
            "result": result,
            "explanation": explanation,
            "usage": usage.wire(),
        },
    )


def _grade(request: ModelRequest, cancel: threading.Event, beat: Any) -> Any:
    """The grader's model call, in a helper thread (it touches no database). This thread calls
    `beat()` every GALLEY_OUTCOME_HEARTBEAT_SECONDS until the answer comes, stops waiting at once on
    an interrupt (the abandoned request ends on its own; its answer is dropped), and re-raises the
    call's error."""
    provider = provider_for(request.model)
    box: dict[str, Any] = {}
    done = threading.Event()

    def call() -> None:
        try:
            box["value"] = provider.complete(request, listener=_Silent(), cancel=cancel)
        except BaseException as exc:  # re-raised in the step's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=call, name="outcome-grader", daemon=True).start()
    interval = settings.GALLEY_OUTCOME_HEARTBEAT_SECONDS
    next_beat = time.monotonic() + interval
    while not done.wait(min(0.05, interval)):
        if cancel.is_set():
            raise ModelCancelled()
        if time.monotonic() >= next_beat:
            beat()
            next_beat = time.monotonic() + interval
    if "error" in box:
        raise box["error"]
    return box["value"]


def outcome_evaluate(session: Session, state: Any, outcome: OpenOutcome) -> bool:
    """Grade the agent's work once. Returns False when the session must stop (budget), True to
    let the loop look again (feedback to act on, or a terminal verdict to idle on)."""
    from harness import services as loop

    session_id = session.pk
    owner = state.handle.owner
    iteration = outcome.iteration
    model = loop._model_id(state.agent)
    with transaction.atomic():
        locked = loop._locked(session_id, owner)
        if budget.budget_stop(session=locked):
            return False
        if locked.status != "running":
            from sessions.services import session_set_status

            session_set_status(session=locked, status="running")
        if outcome.open_start is not None:
            start_id = outcome.open_start.id  # a grader whose worker died: grade again under its span
        else:
            [start] = events_append(
                session=locked,
                events=[
                    NewEvent(
                        "span.outcome_evaluation_start",
                        {"outcome_id": outcome.outcome_id, "iteration": iteration},
                    )
                ],
            )
            start_id = start.id
    state.refresh(session_id)
    request = ModelRequest(
        model=model,
        system=GRADER_SYSTEM,
        tools=[],
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": grader_request_text(
                            define=outcome.define.payload,
                            transcript=transcript(state.events, outcome.define.seq),
                            outputs=outputs(session_id),
                            iteration=iteration,
                        ),
                    }
                ],
            }
        ],
        max_tokens=settings.GALLEY_MODEL_MAX_TOKENS,
    )
    loop._release_connection()

    def beat() -> None:
        with transaction.atomic():
            locked = loop._locked(session_id, owner)  # a lost lease ends the step here
            events_append(
                session=locked,
                events=[
                    NewEvent(
                        "span.outcome_evaluation_ongoing",
                        {"outcome_id": outcome.outcome_id, "iteration": iteration},
                    )
                ],
            )
        loop._release_connection()

    errors: list[NewEvent] = []
    try:
        answer = _grade(request, state.handle.fresh_cancel(), beat)
    except ModelCancelled:
        return True  # an interrupt: the next move marks the outcome interrupted
    except ModelError as exc:
        usage, answer_model = exc.usage, model
        result, explanation = "failed", f"The grader's model request failed: {exc.message}"
        errors.append(loop._error_event(exc, "exhausted"))
    else:
        usage, answer_model = answer.usage, answer.model
        result, explanation = parse_verdict(
            "\n".join(b.get("text", "") for b in answer.blocks if b.get("type") == "text")
        )
    if result == "needs_revision" and iteration + 1 >= outcome.max_iterations:
        result = "max_iterations_reached"
    with transaction.atomic():
        locked = loop._locked(session_id, owner)
        events_append(
            session=locked, events=[*errors, _end(outcome, start_id, iteration, result, explanation, usage)]
        )
        loop._usage_update(session_id, answer_model, usage)  # grader tokens count in usage and cost
    return True


def outcome_interrupt(*, session: Session, events: list[Event]) -> None:
    """An interrupt ends the open outcome as `interrupted` (in the caller's transaction)."""
    outcome = outcome_open(events)
    if outcome is None:
        return
    new: list[NewEvent] = []
    start_id = outcome.open_start.id if outcome.open_start is not None else None
    if start_id is None:
        start = NewEvent(
            "span.outcome_evaluation_start",
            {"outcome_id": outcome.outcome_id, "iteration": outcome.iteration},
        )
        from api.ids import new_id

        start.id = start_id = new_id("sevt")
        new.append(start)
    new.append(
        _end(
            outcome,
            start_id,
            outcome.iteration,
            "interrupted",
            "The user interrupted the session.",
            ModelUsage(),
        )
    )
    events_append(session=session, events=new)


def outcome_history(session_id: str) -> list[dict[str, Any]]:
    """Each outcome of a session with its evaluations (verdict, feedback, usage), for the console."""
    rows = Event.objects.filter(
        session_id=session_id,
        thread=None,
        type__in=("user.define_outcome", "span.outcome_evaluation_start", "span.outcome_evaluation_end"),
    ).order_by("seq")
    outcomes: dict[str, dict[str, Any]] = {}
    for row in rows:
        payload = row.payload
        if row.type == "user.define_outcome":
            outcomes[payload.get("outcome_id", "")] = {
                "outcome_id": payload.get("outcome_id"),
                "description": payload.get("description", ""),
                "rubric": payload.get("rubric") or {},
                "max_iterations": payload.get("max_iterations"),
                "evaluations": [],
                "result": "running",
            }
            continue
        outcome = outcomes.get(payload.get("outcome_id", ""))
        if outcome is None:
            continue
        if row.type == "span.outcome_evaluation_start":
            outcome["result"] = "evaluating"
            continue
        outcome["evaluations"].append(
            {
                "iteration": payload.get("iteration", 0) + 1,
                "result": payload.get("result"),
                "explanation": payload.get("explanation", ""),
                "usage": payload.get("usage") or {},
                "at": row.processed_at,
            }
        )
        outcome["result"] = "running" if payload.get("result") == "needs_revision" else payload.get("result")
    return list(outcomes.values())
