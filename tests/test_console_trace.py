"""The trace tree: turns → model requests → tool calls with roll-ups that match what the harness
counted on the session, and a person's waiting time kept apart from a tool's running time."""

import datetime as dt
from collections.abc import Iterator

import pytest
from django.test import Client

from accounts.models import Role
from console.trace import trace_markdown, trace_tree
from sessions.models import Event, Session
from tests.console_factories import add_events, add_turns, client_for, fast_passwords  # noqa: F401
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


def _decoded(view: dict) -> dict:  # type: ignore[type-arg]
    """The compact view's arrays back into named fields, as the page reads them."""
    fields = view["fields"]
    totals = dict(zip(fields["totals"], view["totals"], strict=True))
    turns = [dict(zip(fields["turn"], turn, strict=True)) for lane in view["lanes"] for turn in lane["turns"]]
    rows = [dict(zip(fields["row"], row, strict=True)) for row in view["replay"]["rows"]]
    return {"totals": totals, "turns": turns, "rows": rows}


def test_the_pages_compact_view_is_the_tree_and_the_replay_in_one(workspace):
    session = make_console_session(workspace)
    add_turns(session, 30)
    client: Client = client_for(workspace, Role.VIEWER)
    response = client.get(f"/sessions/{session.pk}/trace/data.json", HTTP_ACCEPT_ENCODING="gzip")
    assert response.status_code == 200 and response["Content-Encoding"] == "gzip"
    view = client.get(f"/sessions/{session.pk}/trace/data.json").json()
    tree = client.get(f"/sessions/{session.pk}/trace/tree.json").json()
    got = _decoded(view)
    assert {k: got["totals"][k] for k in tree["totals"]} == tree["totals"]
    assert got["totals"]["input_tokens"] == 3000 and got["totals"]["tool_calls"] == 30
    assert [t["title"] for t in got["turns"]] == [t["title"] for t in tree["lanes"][0]["turns"]]
    model_node = dict(zip(view["fields"]["node"], view["lanes"][0]["turns"][7][6][0], strict=True))
    tool_node = dict(zip(view["fields"]["node"], model_node["children"][0], strict=True))
    assert model_node["tokens"] == [100, 10, 0, 0] and model_node["duration_ms"] == 40
    assert (tool_node["name"], tool_node["summary"], tool_node["is_error"]) == ("bash", "echo item-7", 1)
    # The replay: every event once, in order, with the kinds the filters use.
    replay = view["replay"]
    assert [r["seq"] for r in got["rows"]] == list(range(1, 241))
    kinds = [replay["kinds"][r["kind"]] for r in got["rows"]]
    assert kinds.count("status") == 60 and kinds.count("error") == 1 and kinds.count("span") == 60
    end = got["rows"][6]
    assert replay["types"][end["type"]] == "span.model_request_end" and end["latency_ms"] == 40
    assert end["tokens"] == [100, 10, 0, 0] and got["rows"][5]["duration_ms"] == 19
    assert got["rows"][8]["at_ms"] == 100 and "event" not in end  # each event's JSON comes when opened


def test_the_cached_view_follows_the_log(workspace):
    session = make_console_session(workspace)
    add_turns(session, 2)
    client: Client = client_for(workspace, Role.VIEWER)
    first = client.get(f"/sessions/{session.pk}/trace/data.json").json()
    assert first == client.get(f"/sessions/{session.pk}/trace/data.json").json()  # from the cache
    add_turns(session, 1)
    later = client.get(f"/sessions/{session.pk}/trace/data.json").json()
    assert (first["last_seq"], later["last_seq"]) == (16, 24)
    assert len(later["replay"]["rows"]) == 24 and len(later["lanes"][0]["turns"]) == 3
    Session.objects.filter(pk=session.pk).update(status="terminated")
    assert client.get(f"/sessions/{session.pk}/trace/data.json").json()["status"] == "terminated"
    assert client.get("/sessions/sesn_nope/trace/data.json").status_code == 404


def test_one_turns_markdown(workspace):
    session = make_console_session(workspace)
    add_turns(session, 3)
    client: Client = client_for(workspace, Role.VIEWER)
    md = client.get(f"/sessions/{session.pk}/trace/tree.json?format=md&lane=main&turn=2").content.decode()
    assert md.startswith("### Turn 2: Question 1\n") and "- bash: `echo item-1`, ran 19 ms" in md
    assert "Question 0" not in md and "Question 2" not in md
    missing = client.get(f"/sessions/{session.pk}/trace/tree.json?format=md&lane=main&turn=9")
    assert missing.status_code == 404


def test_an_empty_sessions_view(workspace):
    session = make_console_session(workspace)
    view = client_for(workspace, Role.VIEWER).get(f"/sessions/{session.pk}/trace/data.json").json()
    assert (view["lanes"], view["replay"]["rows"], view["last_seq"], view["duration_ms"]) == ([], [], 0, 0)


def test_turns_are_numbered_after_what_came_before_the_first_message(workspace):
    session = make_console_session(workspace)
    add_events(session, [("session.status_idle", {"stop_reason": {"type": "end_turn"}})])
    add_turns(session, 3)
    tree = trace_tree(session, list(Event.objects.filter(session=session).order_by("seq")))
    turns = tree["lanes"][0]["turns"]
    assert [(t["index"], t["title"]) for t in turns] == [
        (0, "Before the first message"),
        (1, "Question 0"),
        (2, "Question 1"),
        (3, "Question 2"),
    ]


def _named_rows(view: dict) -> list[dict]:  # type: ignore[type-arg]
    """The replay's rows with their kind, lane and type as names (each response numbers its own)."""
    replay, names = view["replay"], view["fields"]["row"]
    rows = []
    for values in replay["rows"]:
        row = dict(zip(names, values, strict=True))
        row |= {k: replay[k + "s"][row[k]] for k in ("kind", "lane", "type")}
        rows.append(row)
    return rows


def test_a_running_sessions_page_gets_only_what_changed_since_it_last_asked(workspace):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    session = make_console_session(workspace, status="running")
    add_turns(session, 3)  # seq 1-24
    question, _running, span, use = add_events(
        session,
        [
            ("user.message", {"content": text_blocks("Question 3")}),
            ("session.status_running", {}),
            ("span.model_request_start", {}),
            ("agent.tool_use", {"name": "bash", "input": {"command": "make"}}),
        ],
    )
    client: Client = client_for(workspace, Role.VIEWER)
    url = f"/sessions/{session.pk}/trace/data.json"
    first = client.get(url).json()
    assert first["last_seq"] == 28 and "after" not in first
    # The call's result, a new question (turn 5), then the end of turn 4's model request.
    usage = {"input_tokens": 7, "output_tokens": 3}
    add_events(
        session,
        [
            ("agent.tool_result", {"tool_use_id": use.id, "content": text_blocks("ok")}),
            ("user.message", {"content": text_blocks("Question 4")}),
            ("span.model_request_end", {"model_request_start_id": span.id, "model_usage": usage}),
        ],
    )
    session.refresh_from_db()
    with CaptureQueriesContext(connection) as queries:
        delta = client.get(f"{url}?after=28").json()
    table = Event._meta.db_table
    reads = [q["sql"] for q in queries if f'FROM "{table}"' in q["sql"]]
    assert reads and all('"seq" > 28' in sql or " IN (" in sql for sql in reads), reads  # only what is new
    full = client.get(url).json()
    assert delta["after"] == 28 and delta["last_seq"] == full["last_seq"] == 31
    [lane] = delta["lanes"]
    assert [turn[0] for turn in lane["turns"]] == [4, 5]  # the turn whose request ended, and the new one
    assert lane["turns"] == full["lanes"][0]["turns"][-2:]
    assert (delta["totals"], lane["totals"]) == (full["totals"], full["lanes"][0]["totals"])
    assert delta["duration_ms"] == full["duration_ms"]
    rows = _named_rows(delta)
    assert rows == [row for row in _named_rows(full) if row["seq"] > 28]
    assert rows[2]["latency_ms"] is not None  # the span's start was read before this delta
    assert rows[0]["summary"] == "Result of bash"
    # A second page at the same position gets the same delta (cached); nothing new: no turn, no row.
    assert client.get(f"{url}?after=28").json() == delta
    quiet = client.get(f"{url}?after=31").json()
    assert quiet["after"] == 31 and quiet["lanes"][0]["turns"] == [] and quiet["replay"]["rows"] == []
    # A page further behind (a second tab) still gets a delta: the turns changed since its position.
    behind = client.get(f"{url}?after=5").json()
    assert behind["after"] == 5 and behind["lanes"][0]["turns"] == full["lanes"][0]["turns"]
    assert _named_rows(behind) == [row for row in _named_rows(full) if row["seq"] > 5]
    # A page that knows a log this server does not: the whole view.
    ahead = client.get(f"{url}?after=99").json()
    assert "after" not in ahead and ahead["lanes"] == full["lanes"]
    assert question.seq == 25 and client.get(f"{url}?after=x").status_code == 400


def test_a_live_poll_keeps_its_state_in_the_process_not_pickled_into_the_cache(workspace, monkeypatch):
    from django.core.cache import cache

    session = make_console_session(workspace, status="running")
    add_turns(session, 3)  # seq 1-24
    client: Client = client_for(workspace, Role.VIEWER)
    url = f"/sessions/{session.pk}/trace/data.json"
    assert client.get(url).json()["last_seq"] == 24
    stored: list[type] = []
    real_set = cache.set
    monkeypatch.setattr(
        cache, "set", lambda key, value, *a, **k: (stored.append(type(value)), real_set(key, value, *a, **k))
    )
    add_turns(session, 1)
    delta = client.get(f"{url}?after=24").json()
    assert delta["after"] == 24 and [turn[0] for turn in delta["lanes"][0]["turns"]] == [4]
    assert stored == [bytes]  # the response body only
    from console.trace import trace_states

    assert trace_states.states[session.pk].last_seq == 32


def test_a_poll_on_a_process_whose_state_is_older_reads_on_from_it(workspace):
    """Several web processes: each keeps its own state, so a page's position can be past what this
    process read (another served the polls between); it reads the log after its own state."""
    from console.trace import trace_states

    session = make_console_session(workspace, status="running")
    add_turns(session, 2)  # seq 1-16
    client: Client = client_for(workspace, Role.VIEWER)
    url = f"/sessions/{session.pk}/trace/data.json"
    client.get(url)
    assert trace_states.states[session.pk].last_seq == 16
    add_turns(session, 2)  # seq 17-32: the page got 17-24 from another process
    delta = client.get(f"{url}?after=24").json()
    full = client.get(url).json()
    assert delta["after"] == 24 and delta["last_seq"] == 32
    assert delta["lanes"][0]["turns"] == full["lanes"][0]["turns"][-1:]
    assert delta["totals"] == full["totals"] and delta["duration_ms"] == full["duration_ms"]
    assert _named_rows(delta) == [row for row in _named_rows(full) if row["seq"] > 24]
    # No state here at all (this process never read the session): the whole view, then a state.
    trace_states.take(session.pk)
    whole = client.get(f"{url}?after=32").json()
    assert "after" not in whole and whole["lanes"] == full["lanes"]
    assert trace_states.states[session.pk].last_seq == 32


def test_the_trace_reads_no_tool_output(workspace):
    from console.trace import trace_events

    session = make_console_session(workspace)
    _use, result = add_events(
        session,
        [
            ("agent.tool_use", {"name": "bash", "input": {"command": "cat big"}}),
            (
                "agent.tool_result",
                {"tool_use_id": "sevt_x", "content": text_blocks("x" * 100_000), "is_error": True},
            ),
        ],
    )
    [use_read, result_read] = trace_events(session)
    assert use_read.payload == {"name": "bash", "input": {"command": "cat big"}}
    assert result_read.payload == {"tool_use_id": "sevt_x", "is_error": True}
    assert result_read.created_at == Event.objects.get(pk=result.pk).created_at
