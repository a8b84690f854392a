"""The trace tree: turns → model requests → tool calls with roll-ups that match what the harness
counted on the session, and a person's waiting time kept apart from a tool's running time."""

import datetime as dt
from collections.abc import Iterator

import pytest
from django.test import Client

from accounts.models import Role
from console.trace import trace_markdown, trace_tree
from sessions.models import Event, Session
from tests.console_factories import add_events, client_for, fast_passwords  # noqa: F401
from tests.console_factories import make_session as make_console_session
from tests.console_factories import text as text_blocks
from tests.harness_helpers import custom_tool, events_of, harness_model, make_session, say, send, step
from tests.model_server import ScriptedModel, text, tool_call

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def model(settings) -> Iterator[ScriptedModel]:  # type: ignore[no-untyped-def]
    with harness_model(settings) as server:
        yield server


def test_roll_ups_match_the_sessions_usage_after_a_real_run(model: ScriptedModel) -> None:
    session = make_session(tools=[custom_tool("get_weather")])
    model.push(
        tool_call(
            "get_weather",
            {"city": "Paris"},
            say="Let me check.",
            usage={"input_tokens": 700, "output_tokens": 30},
        ),
        text("Sunny in Paris.", usage={"input_tokens": 900, "output_tokens": 12}),
        text("You are welcome.", usage={"input_tokens": 1000, "output_tokens": 5}),
    )
    say(session, "Weather in Paris?")
    step(session)
    use = events_of(session, "agent.custom_tool_use")[0]
    send(
        session,
        "user.custom_tool_result",
        {"custom_tool_use_id": use.id, "content": [{"type": "text", "text": "21C"}]},
    )
    step(session)
    say(session, "Thanks")
    step(session)
    session = Session.objects.get(pk=session.pk)
    tree = trace_tree(session, list(Event.objects.filter(session=session).order_by("seq")))
    totals = tree["totals"]
    assert totals["input_tokens"] == session.input_tokens == 2600
    assert totals["output_tokens"] == session.output_tokens == 47
    assert totals["cost_micros"] == session.token_cost_micros
    [lane] = tree["lanes"]
    assert [t["index"] for t in lane["turns"]] == [1, 2] and lane["turns"][0]["title"] == "Weather in Paris?"
    first = lane["turns"][0]
    assert first["totals"]["model_requests"] == 2 and first["totals"]["tool_calls"] == 1
    model_node = first["nodes"][0]
    assert model_node["kind"] == "model" and model_node["text"] == "Let me check."
    [tool] = model_node["children"]
    assert tool["name"] == "get_weather (custom)" and tool["summary"] == '{"city": "Paris"}'
    assert tool["wait_ms"] == tool["duration_ms"] and tool["run_ms"] == 0  # all of it was a person's time
    assert sum(t["totals"]["input_tokens"] for t in lane["turns"]) == lane["totals"]["input_tokens"]
    md = trace_markdown(tree)
    assert "### Turn 1: Weather in Paris?" in md and "2,600 in / 47 out" in md


def test_approval_time_is_waiting_not_running(workspace):
    session = make_console_session(workspace)
    t0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    add_events(session, [("user.message", {"content": text_blocks("run it")})], at=t0)
    start = add_events(session, [("span.model_request_start", {})], at=t0)[0]
    use = add_events(
        session,
        [("agent.tool_use", {"name": "bash", "input": {"command": "make"}, "evaluated_permission": "ask"})],
        at=t0 + dt.timedelta(seconds=1),
    )[0]
    add_events(
        session,
        [
            (
                "span.model_request_end",
                {"model_request_start_id": start.id, "model_usage": {"input_tokens": 10}},
            )
        ],
        at=t0 + dt.timedelta(seconds=1),
    )
    add_events(
        session,
        [("user.tool_confirmation", {"tool_use_id": use.id, "result": "allow"})],
        at=t0 + dt.timedelta(seconds=31),
    )
    add_events(
        session,
        [("agent.tool_result", {"tool_use_id": use.id, "content": text_blocks("ok"), "is_error": False})],
        at=t0 + dt.timedelta(seconds=33),
    )
    client: Client = client_for(workspace, Role.VIEWER)
    tree = client.get(f"/sessions/{session.pk}/trace/tree.json").json()
    [tool] = tree["lanes"][0]["turns"][0]["nodes"][0]["children"]
    assert (tool["wait_ms"], tool["run_ms"], tool["duration_ms"]) == (30_000, 2_000, 32_000)
    assert tree["lanes"][0]["turns"][0]["totals"]["wait_ms"] == 30_000
    md = client.get(f"/sessions/{session.pk}/trace/tree.json?format=md").content.decode()
    assert "- bash: `make`, ran 2000 ms, waited 30000 ms for a person" in md
