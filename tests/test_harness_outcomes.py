"""Outcomes in the agent loop (spec 7.5): a user.define_outcome starts work by itself, a grader
with its own context judges each turn, needs_revision feeds its feedback back until satisfied,
max_iterations_reached ends with one acknowledgement turn, an interrupt ends it as interrupted.
The grader is the scripted model answering the requests whose system prompt is the grader's."""

import json
from collections.abc import Iterator
from typing import Any

import pytest

from api.ids import new_id
from harness.outcome_prompts import GRADER_SYSTEM
from sessions.models import Session
from sessions.services import outcome_evaluations_by_session
from tests.harness_helpers import (
    custom_tool,
    events_of,
    harness_model,
    make_session,
    send,
    step,
    step_in_background,
    wait_for,
)
from tests.model_server import Reply, ScriptedModel, text, tool_call

pytestmark = pytest.mark.django_db(transaction=True)


def is_grader(body: dict[str, Any]) -> bool:
    return any(block.get("text") == GRADER_SYSTEM for block in body.get("system") or [])


class Scripted:
    """Answers agent requests and grader requests from two separate scripts."""

    def __init__(self, agent: list[Reply], verdicts: list[tuple[str, str]]) -> None:
        self.agent = list(agent)
        self.verdicts = list(verdicts)

    def __call__(self, body: dict[str, Any]) -> Reply:
        if is_grader(body):
            result, explanation = self.verdicts.pop(0) if self.verdicts else ("satisfied", "fine")
            return text(
                json.dumps({"result": result, "explanation": explanation}), usage={"output_tokens": 40}
            )
        return self.agent.pop(0) if self.agent else text("Done.")


@pytest.fixture
def model(settings) -> Iterator[ScriptedModel]:  # type: ignore[no-untyped-def]
    with harness_model(settings) as server:
        yield server


def define(session: Session, *, max_iterations: int = 3) -> str:
    outcome_id = new_id("outc")
    send(
        session,
        "user.define_outcome",
        {
            "description": "Write a haiku about the sea",
            "rubric": {"type": "text", "content": "Three lines; 5-7-5 syllables; mentions waves."},
            "max_iterations": max_iterations,
            "outcome_id": outcome_id,
        },
    )
    return outcome_id


def agent_requests(model: ScriptedModel) -> list[dict[str, Any]]:
    return [r for r in model.requests if not is_grader(r)]


def grader_requests(model: ScriptedModel) -> list[dict[str, Any]]:
    return [r for r in model.requests if is_grader(r)]


def test_needs_revision_once_then_satisfied(model: ScriptedModel) -> None:
    model.responder = Scripted(
        agent=[text("Waves on the shore"), text("Waves crash on the shore\nthe tide...\n...returns")],
        verdicts=[
            ("needs_revision", "Only one line; a haiku has three."),
            ("satisfied", "Three lines, waves."),
        ],
    )
    session = make_session(system="You are a poet. SECRET-AGENT-PROMPT")
    outcome_id = define(session)
    step(session)

    assert len(agent_requests(model)) == 2 and len(grader_requests(model)) == 2
    starts = events_of(session, "span.outcome_evaluation_start")
    ends = events_of(session, "span.outcome_evaluation_end")
    assert [(e.payload["outcome_id"], e.payload["iteration"]) for e in starts] == [
        (outcome_id, 0),
        (outcome_id, 1),
    ]
    assert [e.payload["result"] for e in ends] == ["needs_revision", "satisfied"]
    assert [e.payload["outcome_evaluation_start_id"] for e in ends] == [s.id for s in starts]
    assert ends[0].payload["explanation"] == "Only one line; a haiku has three."
    assert ends[1].payload["usage"]["output_tokens"] == 40

    # The agent started by itself on the outcome, and got the feedback as its next user turn.
    first, second = agent_requests(model)
    assert "Write a haiku about the sea" in json.dumps(first["messages"])
    assert "Only one line; a haiku has three." in json.dumps(second["messages"][-1])
    # The grader has its own context: the outcome, rubric and transcript, not the agent's prompt.
    grader = grader_requests(model)[0]
    assert "SECRET-AGENT-PROMPT" not in json.dumps(grader)
    assert not grader.get("tools")
    prompt = json.dumps(grader["messages"])
    assert "5-7-5" in prompt and "Waves on the shore" in prompt

    final = Session.objects.get(pk=session.pk)
    assert final.status == "idle" and final.stop_reason == {"type": "end_turn"}
    # Grader tokens count in the session's usage.
    spans = events_of(session, "span.model_request_end")
    agent_output = sum(e.payload["model_usage"]["output_tokens"] for e in spans)
    assert final.output_tokens == agent_output + 80
    [evaluation] = outcome_evaluations_by_session([session.pk])[session.pk]
    assert evaluation["result"] == "satisfied" and evaluation["iteration"] == 1
    assert evaluation["explanation"] == "Three lines, waves." and evaluation["completed_at"]


def test_max_iterations_reached_ends_with_one_acknowledgement_turn(model: ScriptedModel) -> None:
    model.responder = Scripted(
        agent=[text("try 1"), text("try 2"), text("I could not meet the rubric.")],
        verdicts=[("needs_revision", "no"), ("needs_revision", "still no"), ("needs_revision", "never")],
    )
    session = make_session()
    define(session, max_iterations=2)
    step(session)
    ends = events_of(session, "span.outcome_evaluation_end")
    assert [(e.payload["iteration"], e.payload["result"]) for e in ends] == [
        (0, "needs_revision"),
        (1, "max_iterations_reached"),
    ]
    assert len(grader_requests(model)) == 2 and len(agent_requests(model)) == 3
    assert "No further evaluations" in json.dumps(agent_requests(model)[-1]["messages"][-1])
    assert (
        events_of(session, "agent.message")[-1].payload["content"][0]["text"]
        == "I could not meet the rubric."
    )
    final = Session.objects.get(pk=session.pk)
    assert final.status == "idle" and final.stop_reason == {"type": "end_turn"}
    [evaluation] = outcome_evaluations_by_session([session.pk])[session.pk]
    assert evaluation["result"] == "max_iterations_reached"


def test_an_interrupt_ends_the_outcome_as_interrupted(model: ScriptedModel) -> None:
    model.responder = Scripted(agent=[tool_call("get_weather", {"city": "Oslo"})], verdicts=[])
    session = make_session(tools=[custom_tool()])
    define(session)
    step(session)
    assert Session.objects.get(pk=session.pk).stop_reason["type"] == "requires_action"
    from api.errors import ApiError
    from sessions.services import events_send

    another = {"type": "user.define_outcome", "description": "x", "rubric": {"type": "text", "content": "y"}}
    with pytest.raises(ApiError) as info:
        events_send(session=Session.objects.get(pk=session.pk), events=[another])
    assert "still being worked on" in info.value.message
    send(session, "user.interrupt")
    step(session)
    [end] = events_of(session, "span.outcome_evaluation_end")
    assert end.payload["result"] == "interrupted"
    [start] = events_of(session, "span.outcome_evaluation_start")
    assert end.payload["outcome_evaluation_start_id"] == start.id
    assert grader_requests(model) == []
    assert outcome_evaluations_by_session([session.pk])[session.pk][0]["result"] == "interrupted"


def test_a_slow_grader_beats_until_it_answers(model: ScriptedModel, settings) -> None:  # type: ignore[no-untyped-def]
    settings.GALLEY_OUTCOME_HEARTBEAT_SECONDS = 0.1
    verdict = json.dumps({"result": "satisfied", "explanation": "fine"})

    def responder(body: dict[str, Any]) -> Reply:
        return text(verdict, delay=1.0) if is_grader(body) else text("A haiku.")

    model.responder = responder
    session = make_session()
    outcome_id = define(session)
    step(session)
    log = list(session.events.order_by("seq"))
    types = [e.type for e in log]
    start, end = types.index("span.outcome_evaluation_start"), types.index("span.outcome_evaluation_end")
    beats = [i for i, t in enumerate(types) if t == "span.outcome_evaluation_ongoing"]
    assert beats and start < beats[0] and beats[-1] < end  # only while the grader works
    beats = [log[i] for i in beats]
    assert all(b.payload == {"outcome_id": outcome_id, "iteration": 0} for b in beats)
    from anthropic.types.beta.sessions import BetaManagedAgentsSpanOutcomeEvaluationOngoingEvent

    BetaManagedAgentsSpanOutcomeEvaluationOngoingEvent.model_validate(beats[0].wire(), strict=False)
    assert log[end].payload["result"] == "satisfied"
    assert Session.objects.get(pk=session.pk).status == "idle"


def test_an_interrupt_stops_a_slow_grader(model: ScriptedModel, settings) -> None:  # type: ignore[no-untyped-def]
    settings.GALLEY_OUTCOME_HEARTBEAT_SECONDS = 0.1
    verdict = json.dumps({"result": "satisfied", "explanation": "fine"})
    model.responder = lambda body: text(verdict, delay=30.0) if is_grader(body) else text("A haiku.")
    session = make_session()
    define(session)
    worker = step_in_background(session)
    wait_for(lambda: events_of(session, "span.outcome_evaluation_ongoing"), timeout=20)
    send(session, "user.interrupt")
    worker.join(timeout=20)
    assert not worker.is_alive()
    step(session)
    [end] = events_of(session, "span.outcome_evaluation_end")
    assert end.payload["result"] == "interrupted"


def test_an_unreadable_verdict_fails_the_outcome(model: ScriptedModel) -> None:
    def responder(body: dict[str, Any]) -> Reply:
        return text("I think it is fine") if is_grader(body) else text("Work done.")

    model.responder = responder
    session = make_session()
    define(session)
    step(session)
    [end] = events_of(session, "span.outcome_evaluation_end")
    assert end.payload["result"] == "failed" and "I think it is fine" in end.payload["explanation"]
    assert Session.objects.get(pk=session.pk).status == "idle"


def test_the_budget_also_stops_the_grader(model: ScriptedModel) -> None:
    model.responder = Scripted(agent=[text("Expensive work.", usage={"output_tokens": 2000})], verdicts=[])
    session = make_session()
    Session.objects.filter(pk=session.pk).update(
        budget={"type": "limit", "max_list_cost": {"amount": "2", "currency": "USD"}}
    )
    define(session)
    step(session)
    assert grader_requests(model) == []
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "budget_reached"}
    assert events_of(session, "span.outcome_evaluation_start") == []

    from sessions.services import session_update

    session_update(
        session=Session.objects.get(pk=session.pk),
        body={"budget": {"type": "limit", "max_list_cost": {"amount": "900", "currency": "USD"}}},
    )
    step(session)
    assert len(grader_requests(model)) == 1
    assert events_of(session, "span.outcome_evaluation_end")[0].payload["result"] == "satisfied"


def test_the_grader_sees_the_files_in_the_outputs_directory(model: ScriptedModel, sandbox_root) -> None:  # type: ignore[no-untyped-def]
    from tests.harness_helpers import TOOLSET_ALL

    model.responder = Scripted(
        agent=[
            tool_call(
                "write", {"file_path": "/mnt/session/outputs/haiku.txt", "content": "waves fold into foam"}
            ),
            text("Written to haiku.txt."),
        ],
        verdicts=[("satisfied", "Good.")],
    )
    session = make_session(tools=[TOOLSET_ALL])
    define(session)
    step(session)
    [grader] = grader_requests(model)
    prompt = json.dumps(grader["messages"])
    assert "haiku.txt" in prompt and "waves fold into foam" in prompt
    assert events_of(session, "span.outcome_evaluation_end")[0].payload["result"] == "satisfied"
