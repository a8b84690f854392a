"""The agent loop driven by a scripted model through the real anthropic client."""

from collections.abc import Iterator

import pytest

from sessions.models import Session
from tests.harness_helpers import (
    custom_tool,
    events_of,
    harness_model,
    log_types,
    make_session,
    say,
    send,
    step,
    step_in_background,
    wait_for,
)
from tests.model_server import ScriptedModel, text, tool_call

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def model(settings) -> Iterator[ScriptedModel]:  # type: ignore[no-untyped-def]
    with harness_model(settings) as server:
        yield server


def test_a_message_runs_one_turn_and_ends_idle(model: ScriptedModel) -> None:
    session = make_session()
    model.push(text("Hello there, how can I help?"))
    say(session, "Hi")
    step(session)
    assert log_types(session) == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    message = events_of(session, "agent.message")[0]
    assert message.payload["content"] == [{"type": "text", "text": "Hello there, how can I help?"}]
    idle = events_of(session, "session.status_idle")[0]
    assert idle.payload == {"stop_reason": {"type": "end_turn"}}
    assert events_of(session, "user.message")[0].processed_at is not None
    request = model.requests[0]
    assert request["model"] == "claude-sonnet-4-6"
    assert request["system"][0]["text"] == "You are terse."
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}
    ]
    assert "sk-test" in (model.headers[0].get("x-api-key", "") + model.headers[0].get("authorization", ""))
    refreshed = Session.objects.get(pk=session.pk)
    assert refreshed.status == "idle" and refreshed.lease_owner is None
    end = events_of(session, "span.model_request_end")[0]
    start = events_of(session, "span.model_request_start")[0]
    assert end.payload["model_request_start_id"] == start.id


def test_a_final_answer_and_its_idle_commit_together_with_the_turns_usage(model: ScriptedModel) -> None:
    """A turn that ends with nothing else to do idles in the answer's own append: the idle's seq
    follows the span's end, the row's counters hold the call's usage and its running time."""
    session = make_session()
    model.push(text("Done.", usage={"input_tokens": 120, "output_tokens": 7}))
    say(session, "Hi")
    step(session)
    end = events_of(session, "span.model_request_end")[0]
    idle = events_of(session, "session.status_idle")[0]
    assert idle.seq == end.seq + 1 and idle.created_at == end.created_at  # one append
    row = Session.objects.get(pk=session.pk)
    assert (row.input_tokens, row.output_tokens) == (120, 7)
    assert row.token_cost_micros > 0 and row.running_since is None and row.active_seconds > 0
    assert row.status == "idle" and row.stop_reason == {"type": "end_turn"}


def test_a_message_sent_while_the_model_answers_gets_its_own_call_before_the_idle(
    model: ScriptedModel,
) -> None:
    """The turn cannot end with its answer when something came meanwhile: the locked move takes
    the new message to the model, and the session idles once, after the second answer."""
    session = make_session()
    model.push(text("First.", delay=0.6), text("Second."))
    say(session, "Hi")
    worker = step_in_background(session)
    wait_for(lambda: len(model.requests) == 1)
    say(session, "And this")
    worker.join(30)
    assert not worker.is_alive()
    assert log_types(session) == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "user.message",
        "agent.message",
        "span.model_request_end",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    assert len(model.requests) == 2
    assert "And this" in str(model.requests[1]["messages"][-1])
    assert all(e.processed_at is not None for e in events_of(session, "user.message"))


def test_custom_tool_idles_with_requires_action_and_resumes_on_the_result(model: ScriptedModel) -> None:
    session = make_session(tools=[custom_tool("get_weather")])
    model.push(
        tool_call("get_weather", {"city": "Paris", "unit": "celsius-degrees"}, say="Let me check."),
        text("It is sunny in Paris."),
    )
    say(session, "Weather in Paris?")
    step(session)
    use = events_of(session, "agent.custom_tool_use")[0]
    assert use.payload == {"name": "get_weather", "input": {"city": "Paris", "unit": "celsius-degrees"}}
    idle = events_of(session, "session.status_idle")[-1]
    assert idle.payload["stop_reason"] == {"type": "requires_action", "event_ids": [use.id]}
    assert model.requests[0]["tools"][0]["name"] == "get_weather"
    assert model.requests[0]["tools"][-1]["cache_control"] == {"type": "ephemeral"}

    send(
        session,
        "user.custom_tool_result",
        {"custom_tool_use_id": use.id, "content": [{"type": "text", "text": "sunny, 21C"}]},
    )
    step(session)
    assert log_types(session)[-4:] == [
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}
    second = model.requests[1]["messages"]
    assert second[1]["role"] == "assistant"
    assert second[1]["content"][1] == {
        "type": "tool_use",
        "id": use.id,
        "name": "get_weather",
        "input": {"city": "Paris", "unit": "celsius-degrees"},
    }
    assert second[2]["content"][0]["type"] == "tool_result"
    assert second[2]["content"][0]["tool_use_id"] == use.id
    assert second[2]["content"][0]["content"] == [{"type": "text", "text": "sunny, 21C"}]


ASK_TOOLSET = {
    "type": "agent_toolset_20260401",
    "default_config": {"enabled": True, "permission_policy": {"type": "always_ask"}},
    "configs": [],
}


def test_a_built_in_tool_call_gets_a_result_and_the_loop_continues(model: ScriptedModel) -> None:
    from tests.harness_helpers import TOOLSET_ALL

    session = make_session(tools=[TOOLSET_ALL])
    model.push(tool_call("read", {"file_path": "missing-file.txt"}), text("That file does not exist."))
    say(session, "Read missing-file.txt")
    step(session)
    assert log_types(session) == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "agent.tool_use",
        "span.model_request_end",
        "agent.tool_result",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    use = events_of(session, "agent.tool_use")[0]
    assert use.payload["evaluated_permission"] == "allow"
    assert use.payload["evaluation"] == {"type": "always_allow"}
    result = events_of(session, "agent.tool_result")[0]
    assert result.payload["tool_use_id"] == use.id and result.payload["is_error"] is True
    assert sorted(t["name"] for t in model.requests[0]["tools"]) == sorted(
        ["bash", "read", "write", "edit", "glob", "grep", "web_fetch", "web_search"]
    )
    assert model.requests[1]["messages"][-1]["content"][0]["tool_use_id"] == use.id


def test_disabled_toolset_tools_are_not_offered(model: ScriptedModel) -> None:
    toolset = {
        "type": "agent_toolset_20260401",
        "default_config": {"enabled": False, "permission_policy": {"type": "always_allow"}},
        "configs": [
            {"name": "grep", "type": "grep", "enabled": True, "permission_policy": {"type": "always_allow"}}
        ],
    }
    session = make_session(tools=[toolset, custom_tool("lookup")])
    say(session, "hi")
    step(session)
    assert [t["name"] for t in model.requests[0]["tools"]] == ["grep", "lookup"]


def test_always_ask_waits_for_confirmation_then_runs_on_allow(model: ScriptedModel) -> None:
    session = make_session(tools=[ASK_TOOLSET])
    model.push(tool_call("glob", {"pattern": "*.py"}), text("Listed."))
    say(session, "List python files")
    step(session)
    use = events_of(session, "agent.tool_use")[0]
    assert use.payload["evaluated_permission"] == "ask"
    assert use.payload["evaluation"] == {"type": "always_ask"}
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {
        "type": "requires_action",
        "event_ids": [use.id],
    }
    assert not events_of(session, "agent.tool_result")

    confirmation = send(session, "user.tool_confirmation", {"tool_use_id": use.id, "result": "allow"})
    step(session)
    assert events_of(session, "agent.tool_result")[0].payload["tool_use_id"] == use.id
    assert log_types(session)[-1] == "session.status_idle"
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}
    assert events_of(session, "user.tool_confirmation")[0].processed_at is not None
    assert confirmation.id
    assert len(model.requests) == 2


def test_always_ask_deny_returns_the_denial_to_the_model(model: ScriptedModel) -> None:
    session = make_session(tools=[ASK_TOOLSET])
    model.push(tool_call("bash", {"command": "rm -rf /tmp/x"}), text("Understood, I will not."))
    say(session, "Clean up")
    step(session)
    use = events_of(session, "agent.tool_use")[0]
    send(
        session,
        "user.tool_confirmation",
        {"tool_use_id": use.id, "result": "deny", "deny_message": "Never delete files."},
    )
    step(session)
    result = events_of(session, "agent.tool_result")[0]
    assert result.payload["is_error"] is True
    assert "Never delete files." in result.payload["content"][0]["text"]
    tool_result = model.requests[1]["messages"][-1]["content"][0]
    assert tool_result["is_error"] is True and "Never delete files." in tool_result["content"][0]["text"]
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}


def test_several_tool_calls_in_one_answer_are_all_handled(model: ScriptedModel) -> None:
    from tests.model_server import Reply

    session = make_session(tools=[custom_tool("alpha"), custom_tool("beta"), ASK_TOOLSET])
    model.push(
        Reply(
            blocks=[
                {"type": "text", "text": "Doing three things."},
                {"type": "tool_use", "name": "alpha", "input": {"city": "A"}},
                {"type": "tool_use", "name": "beta", "input": {"city": "B"}},
                {"type": "tool_use", "name": "grep", "input": {"pattern": "x"}},
            ]
        ),
        text("All done."),
    )
    say(session, "go")
    step(session)
    alpha, beta = events_of(session, "agent.custom_tool_use")
    grep = events_of(session, "agent.tool_use")[0]
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {
        "type": "requires_action",
        "event_ids": [alpha.id, beta.id, grep.id],
    }
    send(
        session,
        "user.custom_tool_result",
        {"custom_tool_use_id": alpha.id, "content": [{"type": "text", "text": "a"}]},
    )
    step(session)
    # Resolving only some re-emits an idle listing the rest.
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {
        "type": "requires_action",
        "event_ids": [beta.id, grep.id],
    }
    assert len(model.requests) == 1
    send(
        session,
        "user.custom_tool_result",
        {"custom_tool_use_id": beta.id, "content": [{"type": "text", "text": "b"}], "is_error": True},
    )
    send(session, "user.tool_confirmation", {"tool_use_id": grep.id, "result": "deny"})
    step(session)
    assert len(model.requests) == 2
    results = model.requests[1]["messages"][-1]["content"]
    assert [r["tool_use_id"] for r in results] == [alpha.id, beta.id, grep.id]
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}


def test_an_unknown_tool_is_refused_and_the_model_told(model: ScriptedModel) -> None:
    session = make_session(tools=[custom_tool("alpha")])
    model.push(tool_call("nope", {}), text("ok"))
    say(session, "go")
    step(session)
    use = events_of(session, "agent.tool_use")[0]
    assert use.payload["evaluated_permission"] == "deny"
    result = events_of(session, "agent.tool_result")[0]
    assert result.payload["tool_use_id"] == use.id and result.payload["is_error"] is True
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}


def test_a_tool_call_left_without_result_by_a_crash_is_resolved_explicitly(model: ScriptedModel) -> None:
    """The log a SIGKILLed worker leaves mid-tool: tool_use events recorded, no results, an expired
    lease. Read-only tools run again; side-effecting ones get an error saying the run was lost."""
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from sessions.models import Event
    from sessions.services import NewEvent, events_append
    from tests.harness_helpers import TOOLSET_ALL

    session = make_session(tools=[TOOLSET_ALL])
    say(session, "do things")
    allow = {"evaluated_permission": "allow", "evaluation": {"type": "always_allow"}}
    with transaction.atomic():
        Event.objects.filter(session_id=session.pk).update(processed_at=timezone.now())
        start = events_append(session=session, events=[NewEvent("span.model_request_start", {})])[0]
        read, bash = events_append(
            session=session,
            events=[
                NewEvent("agent.tool_use", {"name": "read", "input": {"file_path": "a.txt"}, **allow}),
                NewEvent("agent.tool_use", {"name": "bash", "input": {"command": "touch x"}, **allow}),
                NewEvent(
                    "span.model_request_end",
                    {
                        "model_request_start_id": start.id,
                        "model_usage": {
                            "input_tokens": 1,
                            "output_tokens": 1,
                            "cache_read_input_tokens": 0,
                            "cache_creation_input_tokens": 0,
                        },
                    },
                ),
            ],
        )[:2]
        Session.objects.filter(pk=session.pk).update(
            lease_owner="dead-worker", lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
    model.push(text("Recovered."))
    step(session)
    results = {e.payload["tool_use_id"]: e for e in events_of(session, "agent.tool_result")}
    assert set(results) == {read.id, bash.id}
    assert "was lost" in results[bash.id].payload["content"][0]["text"]
    assert results[bash.id].payload["is_error"] is True
    assert "was lost" not in str(results[read.id].payload)  # it ran again
    assert len(model.requests) == 1
    assert sorted(b["tool_use_id"] for b in model.requests[0]["messages"][-1]["content"]) == sorted(
        [read.id, bash.id]
    )
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}


def test_a_live_lease_keeps_a_second_step_out(model: ScriptedModel) -> None:
    from datetime import timedelta

    from django.utils import timezone

    session = make_session()
    say(session, "hi")
    Session.objects.filter(pk=session.pk).update(
        lease_owner="other-worker", lease_expires_at=timezone.now() + timedelta(seconds=30)
    )
    step(session)
    assert model.requests == []
    assert log_types(session) == ["user.message", "session.status_running"]


@pytest.mark.sandbox
def test_a_built_in_bash_call_runs_in_the_sandbox_and_its_output_reaches_the_model(
    model: ScriptedModel,
) -> None:
    from tests.harness_helpers import TOOLSET_ALL

    session = make_session(tools=[TOOLSET_ALL])
    model.push(tool_call("bash", {"command": "echo harness-$((6*7))"}), text("It printed 42."))
    say(session, "Run it")
    step(session)
    use = events_of(session, "agent.tool_use")[0]
    result = events_of(session, "agent.tool_result")[0]
    assert result.payload["tool_use_id"] == use.id
    assert not result.payload.get("is_error"), result.payload
    assert "harness-42" in str(result.payload["content"])
    sent = model.requests[1]["messages"][-1]["content"][0]
    assert sent["tool_use_id"] == use.id and "harness-42" in str(sent["content"])
    assert events_of(session, "session.status_idle")[-1].payload["stop_reason"] == {"type": "end_turn"}
