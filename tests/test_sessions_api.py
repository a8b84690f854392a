"""Sessions, events and threads through the /v1 API in-process (Django test client, real DB)."""

import json
from typing import Any

import pytest
from django.test import Client

from accounts.models import ApiKey, Workspace
from agents.models import Environment
from sessions.models import Event, Session, SessionThread
from sessions.services import NewEvent, events_append
from tests.session_fixtures import make_agent, make_environment

pytestmark = pytest.mark.django_db


class Api:
    def __init__(self, raw_key: str) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {raw_key}"}

    def get(self, path: str, **query: Any) -> Any:
        return self.client.get(f"/v1{path}", query, headers=self.headers)

    def post(self, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else json.dumps(body if body is not None else {})
        return self.client.post(f"/v1{path}", data, content_type="application/json", headers=self.headers)

    def delete(self, path: str) -> Any:
        return self.client.delete(f"/v1{path}", headers=self.headers)


@pytest.fixture
def api(api_key: str) -> Api:
    return Api(api_key)


@pytest.fixture
def agent(workspace):  # type: ignore[no-untyped-def]
    return make_agent(workspace, versions=2)


@pytest.fixture
def environment(workspace):  # type: ignore[no-untyped-def]
    return make_environment(workspace)


def _create(api: Api, agent, environment, **extra: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = api.post("/sessions", {"agent": agent.id, "environment_id": environment.id, **extra})
    assert response.status_code == 200, response.content
    return response.json()


def _error(response: Any, status: int) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["type"] == "error" and body["request_id"].startswith("req_")
    return str(body["error"]["message"])


def test_a_session_created_with_a_string_agent_pins_the_latest_version_and_starts_idle(
    api, agent, environment
):
    body = _create(api, agent, environment, title="t", metadata={"k": "v"})
    assert body["id"].startswith("sesn_") and body["type"] == "session"
    assert body["status"] == "idle"
    assert body["agent"]["version"] == 2 and body["agent"]["id"] == agent.id
    assert body["vault_ids"] == [] and body["resources"] == [] and body["outcome_evaluations"] == []
    assert body["usage"]["list_cost"] == {"amount": "0", "currency": "USD"}
    assert body["deployment_id"] is None and body["archived_at"] is None
    session = Session.objects.get(pk=body["id"])
    assert session.api_key is not None
    assert SessionThread.objects.filter(session=session, parent=None).count() == 1
    assert not Event.objects.filter(session=session).exists()


def test_a_pinned_version_is_used_and_a_missing_version_is_named(api, agent, environment):
    response = api.post(
        "/sessions",
        {"agent": {"type": "agent", "id": agent.id, "version": 1}, "environment_id": environment.id},
    )
    assert response.json()["agent"]["version"] == 1
    message = _error(
        api.post(
            "/sessions",
            {"agent": {"type": "agent", "id": agent.id, "version": 7}, "environment_id": environment.id},
        ),
        404,
    )
    assert "version 7" in message


def test_initial_events_start_the_session_running_in_order(api, agent, environment):
    body = _create(
        api,
        agent,
        environment,
        initial_events=[
            {"type": "user.message", "content": [{"type": "text", "text": "hi"}]},
            {"type": "user.define_outcome", "description": "d", "rubric": {"type": "text", "content": "r"}},
        ],
    )
    assert body["status"] == "running"
    events = list(Event.objects.filter(session_id=body["id"]).order_by("seq"))
    assert [e.type for e in events] == ["user.message", "user.define_outcome", "session.status_running"]
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].processed_at is None and events[1].processed_at is not None
    assert events[1].payload["outcome_id"].startswith("outc_") and events[1].payload["max_iterations"] == 3
    assert body["outcome_evaluations"][0]["result"] == "pending"


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"initial_events": [{"type": "user.interrupt"}]}, "initial_events[0].type"),
        (
            {"initial_events": [{"type": "user.message", "content": [{"type": "redacted"}]}]},
            "initial_events[0].content[0].type",
        ),
        (
            {"initial_events": [{"type": "user.message", "content": [{"type": "text", "text": "x"}]}] * 51},
            "initial_events",
        ),
        ({"resources": [{"type": "floppy"}]}, "resources[0].type"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        (
            {"budget": {"type": "limit", "max_list_cost": {"amount": "1.5", "currency": "USD"}}},
            "budget.max_list_cost.amount",
        ),
        ({"agent": {"type": "robot", "id": "agent_x"}}, "agent.type"),
    ],
)
def test_bad_create_bodies_are_rejected_naming_the_field_and_write_nothing(
    api, agent, environment, bad, field
):
    body = {"agent": agent.id, "environment_id": environment.id, **bad}
    message = _error(api.post("/sessions", body), 400)
    assert message.startswith(field)
    assert not Session.objects.exists() and not Event.objects.exists()


def test_an_archived_environment_is_rejected_and_another_workspaces_is_not_found(api, agent, environment):
    Environment.objects.filter(pk=environment.pk).update(archived_at="2026-01-01T00:00:00Z")
    response = api.post("/sessions", {"agent": agent.id, "environment_id": environment.id})
    _error(response, 400)
    assert response.json()["error"]["details"]["error_code"] == "environment_archived"
    other = make_environment(Workspace.objects.create(name="other"), name="o")
    _error(api.post("/sessions", {"agent": agent.id, "environment_id": other.id}), 404)


def test_sending_a_message_echoes_it_and_starts_an_idle_session(api, agent, environment):
    sid = _create(api, agent, environment)["id"]
    response = api.post(
        f"/sessions/{sid}/events",
        {"events": [{"type": "user.message", "content": [{"type": "text", "text": "hello"}]}]},
    )
    assert response.status_code == 200, response.content
    [echo] = response.json()["data"]
    assert echo["id"].startswith("sevt_") and echo["processed_at"] is None
    assert echo["content"] == [{"type": "text", "text": "hello"}]
    listed = api.get(f"/sessions/{sid}/events").json()
    assert [e["type"] for e in listed["data"]] == ["user.message", "session.status_running"]
    assert listed["next_page"] is None
    assert api.get(f"/sessions/{sid}").json()["status"] == "running"


def test_an_interrupt_never_starts_a_session(api, agent, environment):
    sid = _create(api, agent, environment)["id"]
    api.post(f"/sessions/{sid}/events", {"events": [{"type": "user.interrupt"}]})
    assert Session.objects.get(pk=sid).status == "idle"
    assert list(Event.objects.filter(session_id=sid).values_list("type", flat=True)) == ["user.interrupt"]


@pytest.mark.parametrize(
    "events, field",
    [
        ([{"type": "user.bogus"}], "events[0].type"),
        ([{"type": "user.message", "content": []}], "events[0].content"),
        (
            [{"type": "user.message", "content": [{"type": "image", "source": {"type": "ftp"}}]}],
            "events[0].content[0].source.type",
        ),
        (
            [
                {
                    "type": "user.message",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "data": "x", "media_type": "text/html"},
                        }
                    ],
                }
            ],
            "events[0].content[0].source.media_type",
        ),
        (
            [{"type": "user.tool_confirmation", "tool_use_id": "sevt_nope", "result": "allow"}],
            "events[0].tool_use_id",
        ),
        (
            [
                {
                    "type": "user.tool_confirmation",
                    "tool_use_id": "sevt_x",
                    "result": "allow",
                    "deny_message": "no",
                }
            ],
            "events[0].deny_message",
        ),
        (
            [{"type": "user.tool_confirmation", "tool_use_id": "sevt_x", "result": "maybe"}],
            "events[0].result",
        ),
        (
            [{"type": "user.custom_tool_result", "custom_tool_use_id": "sevt_nope"}],
            "events[0].custom_tool_use_id",
        ),
        ([{"type": "user.tool_result", "tool_use_id": "sevt_nope"}], "events[1].type"),
        (
            [
                {
                    "type": "user.define_outcome",
                    "description": "d",
                    "rubric": {"type": "text", "content": "r"},
                    "max_iterations": 21,
                }
            ],
            "events[0].max_iterations",
        ),
        (
            [
                {"type": "system.message", "content": [{"type": "text", "text": "a"}]},
                {"type": "user.interrupt"},
            ],
            "events[0]",
        ),
        ([{"type": "user.interrupt"}, {"type": "system.message", "content": []}], "events[1].content"),
        (
            [
                {"type": "user.interrupt"},
                {"type": "system.message", "content": [{"type": "text", "text": "a"}]},
            ],
            "events[1]",
        ),
        ([{"type": "system.message", "content": [{"type": "text", "text": "a"}]}], "events[0]"),
        ([], "events"),
    ],
)
def test_bad_events_are_rejected_naming_the_field_and_nothing_is_written(
    api, agent, environment, events, field
):
    sid = _create(api, agent, environment)["id"]
    if field == "events[1].type":  # user.tool_result on a cloud environment, after a valid event
        events = [{"type": "user.message", "content": [{"type": "text", "text": "x"}]}, *events]
    message = _error(api.post(f"/sessions/{sid}/events", {"events": events}), 400)
    assert message.startswith(field), message
    assert not Event.objects.filter(session_id=sid).exists()
    assert Session.objects.get(pk=sid).status == "idle"


def test_tool_confirmation_and_custom_tool_results_name_awaiting_events(api, agent, environment):
    from django.db import transaction

    sid = _create(api, agent, environment)["id"]
    with transaction.atomic():
        ask, custom = events_append(
            session=sid,
            events=[
                NewEvent("agent.tool_use", {"name": "bash", "input": {}, "evaluated_permission": "ask"}),
                NewEvent(
                    "agent.custom_tool_use",
                    {"name": "lookup", "input": {}, "session_thread_id": "sthr_child"},
                ),
            ],
        )
    response = api.post(
        f"/sessions/{sid}/events",
        {
            "events": [
                {
                    "type": "user.tool_confirmation",
                    "tool_use_id": ask.id,
                    "result": "deny",
                    "deny_message": "no",
                },
                {
                    "type": "user.custom_tool_result",
                    "custom_tool_use_id": custom.id,
                    "content": [{"type": "text", "text": "42"}],
                },
            ]
        },
    )
    assert response.status_code == 200, response.content
    confirmation, result = response.json()["data"]
    assert confirmation["processed_at"] is None and result["processed_at"] is not None
    assert result["session_thread_id"] == "sthr_child" and result["is_error"] is False
    again = api.post(
        f"/sessions/{sid}/events",
        {"events": [{"type": "user.tool_confirmation", "tool_use_id": ask.id, "result": "allow"}]},
    )
    assert "not awaiting confirmation" in _error(again, 400)


def test_user_tool_result_is_accepted_for_self_hosted_environments(api, agent, workspace):
    from django.db import transaction

    env = make_environment(workspace, name="sh", self_hosted=True)
    sid = _create(api, agent, env)["id"]
    with transaction.atomic():
        [use] = events_append(session=sid, events=[NewEvent("agent.tool_use", {"name": "bash", "input": {}})])
    response = api.post(
        f"/sessions/{sid}/events", {"events": [{"type": "user.tool_result", "tool_use_id": use.id}]}
    )
    assert response.status_code == 200, response.content
    assert response.json()["data"][0]["processed_at"] is not None


def test_events_list_filters_types_orders_and_pages(api, agent, environment):
    sid = _create(api, agent, environment)["id"]
    for n in range(5):
        api.post(
            f"/sessions/{sid}/events",
            {"events": [{"type": "user.message", "content": [{"type": "text", "text": str(n)}]}]},
        )
    only = api.get(f"/sessions/{sid}/events", **{"types[]": "user.message"}).json()["data"]
    assert [e["content"][0]["text"] for e in only] == ["0", "1", "2", "3", "4"]
    first = api.get(f"/sessions/{sid}/events", limit=2, order="desc").json()
    assert [e["type"] for e in first["data"]] == ["user.message", "user.message"]
    seen = [e["id"] for e in first["data"]]
    page = first["next_page"]
    while page:
        body = api.get(f"/sessions/{sid}/events", limit=2, order="desc", page=page).json()
        seen += [e["id"] for e in body["data"]]
        page = body["next_page"]
    assert len(seen) == 6 and len(set(seen)) == 6
    _error(api.get(f"/sessions/{sid}/events", **{"types[]": "agent.nope"}), 400)
    _error(api.get(f"/sessions/{sid}/events", page="page_garbage"), 400)
    _error(api.get(f"/sessions/{sid}/events", limit=1001), 400)
    _error(api.get(f"/sessions/{sid}/events", **{"created_at[gte]": "yesterday"}), 400)


def test_session_list_filters_and_pages_both_ways(api, agent, environment, workspace):
    other_agent = make_agent(workspace, name="other")
    ids = [_create(api, agent, environment)["id"] for _ in range(3)]
    _create(api, other_agent, environment)
    listed = api.get("/sessions", agent_id=agent.id, limit=2).json()
    assert [s["id"] for s in listed["data"]] == ids[::-1][:2] and listed["prev_page"] is None
    second = api.get("/sessions", agent_id=agent.id, limit=2, page=listed["next_page"]).json()
    assert [s["id"] for s in second["data"]] == [ids[0]] and second["next_page"] is None
    back = api.get("/sessions", agent_id=agent.id, limit=2, page=second["prev_page"]).json()
    assert [s["id"] for s in back["data"]] == ids[::-1][:2]
    assert len(api.get("/sessions", agent_id=agent.id, agent_version=2).json()["data"]) == 3
    assert api.get("/sessions", agent_id=agent.id, agent_version=1).json()["data"] == []
    _error(api.get("/sessions", agent_version=1), 400)
    _error(api.get("/sessions", **{"statuses[]": "sleeping"}), 400)
    assert len(api.get("/sessions", **{"statuses[]": "idle"}).json()["data"]) == 4
    assert api.get("/sessions", deployment_id="depl_01X").json() == {
        "data": [],
        "next_page": None,
        "prev_page": None,
    }


def test_update_emits_only_the_changed_fields(api, agent, environment):
    sid = _create(api, agent, environment, title="a", metadata={"keep": "1", "drop": "2"})["id"]
    response = api.post(f"/sessions/{sid}", {"title": "b", "metadata": {"drop": None, "new": "3"}})
    assert response.status_code == 200, response.content
    assert response.json()["metadata"] == {"keep": "1", "new": "3"}
    [updated] = Event.objects.filter(session_id=sid, type="session.updated")
    assert updated.payload == {"title": "b", "metadata": {"keep": "1", "new": "3"}}
    api.post(f"/sessions/{sid}", {"title": "b"})
    assert Event.objects.filter(session_id=sid, type="session.updated").count() == 1
    assert _error(api.post(f"/sessions/{sid}", {"vault_ids": []}), 400).startswith("vault_ids")
    tools = [{"type": "custom", "name": "x", "description": "d", "input_schema": {"type": "object"}}]
    [tool] = api.post(f"/sessions/{sid}", {"agent": {"tools": tools}}).json()["agent"]["tools"]
    assert (tool["type"], tool["name"]) == ("custom", "x")
    bad_tool = {"agent": {"tools": [{"type": "custom", "name": "x"}]}}
    assert _error(api.post(f"/sessions/{sid}", bad_tool), 400).startswith("agent.tools[0]")
    api.post(
        f"/sessions/{sid}/events",
        {"events": [{"type": "user.message", "content": [{"type": "text", "text": "x"}]}]},
    )
    _error(api.post(f"/sessions/{sid}", {"agent": {"tools": []}}), 409)


def test_archive_terminates_and_makes_the_session_read_only(api, agent, environment):
    sid = _create(api, agent, environment)["id"]
    body = api.post(f"/sessions/{sid}/archive").json()
    assert body["status"] == "terminated" and body["archived_at"] is not None
    assert list(Event.objects.filter(session_id=sid).values_list("type", flat=True)) == [
        "session.status_terminated"
    ]
    response = api.post(f"/sessions/{sid}/events", {"events": [{"type": "user.interrupt"}]})
    assert "archived" in _error(response, 409)
    assert api.get("/sessions").json()["data"] == []
    assert len(api.get("/sessions", include_archived="true").json()["data"]) == 1


def test_delete_refuses_a_running_session_and_removes_an_idle_one(api, agent, environment):
    sid = _create(
        api,
        agent,
        environment,
        initial_events=[{"type": "user.message", "content": [{"type": "text", "text": "x"}]}],
    )["id"]
    _error(api.delete(f"/sessions/{sid}"), 409)
    Session.objects.filter(pk=sid).update(status="idle")
    assert api.delete(f"/sessions/{sid}").json() == {"id": sid, "type": "session_deleted"}
    assert not Event.objects.filter(session_id=sid).exists()
    _error(api.get(f"/sessions/{sid}"), 404)


def test_threads_list_retrieve_and_primary_events(api, agent, environment):
    sid = _create(api, agent, environment)["id"]
    api.post(
        f"/sessions/{sid}/events",
        {"events": [{"type": "user.message", "content": [{"type": "text", "text": "x"}]}]},
    )
    threads = api.get(f"/sessions/{sid}/threads").json()
    [primary] = threads["data"]
    assert primary["parent_thread_id"] is None and primary["status"] == "running"
    assert primary["type"] == "session_thread" and threads["next_page"] is None
    assert api.get(f"/sessions/{sid}/threads/{primary['id']}").json()["id"] == primary["id"]
    events = api.get(f"/sessions/{sid}/threads/{primary['id']}/events").json()["data"]
    assert [e["type"] for e in events] == ["user.message", "session.status_running"]
    response = api.get(f"/sessions/{sid}/threads/sthr_01NOPE")
    _error(response, 404)
    assert response.json()["error"]["details"]["error_code"] == "thread_not_found"
    _error(api.post(f"/sessions/{sid}/threads/{primary['id']}/archive"), 400)


def test_another_workspaces_key_gets_404_on_every_session_route(api, agent, environment):
    sid = _create(api, agent, environment)["id"]
    thread = SessionThread.objects.get(session_id=sid)
    _key, raw = ApiKey.generate(workspace=Workspace.objects.create(name="other"), name="o")
    other = Api(raw)
    tid = thread.pk
    for response in [
        other.get(f"/sessions/{sid}"),
        other.post(f"/sessions/{sid}", {"title": "x"}),
        other.post(f"/sessions/{sid}/archive"),
        other.delete(f"/sessions/{sid}"),
        other.post(f"/sessions/{sid}/events", {"events": [{"type": "user.interrupt"}]}),
        other.get(f"/sessions/{sid}/events"),
        other.get(f"/sessions/{sid}/events/stream"),
        other.get(f"/sessions/{sid}/threads"),
        other.get(f"/sessions/{sid}/threads/{tid}"),
        other.post(f"/sessions/{sid}/threads/{tid}/archive"),
        other.get(f"/sessions/{sid}/threads/{tid}/events"),
        other.get(f"/sessions/{sid}/threads/{tid}/stream"),
    ]:
        _error(response, 404)
    assert other.get("/sessions").json()["data"] == []
    anonymous = Client().get(f"/v1/sessions/{sid}/events/stream")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
    assert Session.objects.get(pk=sid).title is None and not Event.objects.exists()


def test_wrong_prefixes_bad_json_and_oversized_bodies_get_4xx_in_the_error_shape(
    api, agent, environment, settings
):
    sid = _create(api, agent, environment)["id"]
    _error(api.get("/sessions/agent_01X"), 404)
    _error(api.post(f"/sessions/{sid}/events", raw=b"{not json"), 400)
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    big = {"events": [{"type": "user.message", "content": [{"type": "text", "text": "x" * 5000}]}]}
    _error(api.post(f"/sessions/{sid}/events", big), 413)
    assert not Event.objects.filter(session_id=sid).exists()


def _child_thread(session_id: str, status: str = "idle") -> SessionThread:
    from api.ids import new_id

    primary = SessionThread.objects.get(session_id=session_id, parent=None)
    return SessionThread.objects.create(
        id=new_id("sthr"),
        session_id=session_id,
        parent=primary,
        agent_name="worker",
        agent_snapshot=primary.agent_snapshot,
        status=status,
    )


def test_child_threads_keep_their_own_events_and_archive_only_when_idle(api, agent, environment):
    from django.db import transaction

    sid = _create(api, agent, environment)["id"]
    child = _child_thread(sid)
    busy = _child_thread(sid, status="running")
    with transaction.atomic():
        events_append(
            session=sid,
            events=[
                NewEvent("agent.message", {"content": []}, thread=child),
                NewEvent("session.thread_created", {"session_thread_id": child.pk, "agent_name": "worker"}),
            ],
        )
    assert [e["type"] for e in api.get(f"/sessions/{sid}/threads/{child.pk}/events").json()["data"]] == [
        "agent.message"
    ]
    assert [e["type"] for e in api.get(f"/sessions/{sid}/events").json()["data"]] == [
        "session.thread_created"
    ]
    listed = api.get(f"/sessions/{sid}/threads", **{"statuses[]": "running"}).json()["data"]
    assert [t["id"] for t in listed] == [busy.pk]
    assert len(api.get(f"/sessions/{sid}/threads", limit=1).json()["data"]) == 1
    _error(api.post(f"/sessions/{sid}/threads/{busy.pk}/archive"), 409)
    archived = api.post(f"/sessions/{sid}/threads/{child.pk}/archive").json()
    assert archived["archived_at"] is not None and archived["parent_thread_id"] is not None


def test_events_created_at_filters_compare_processed_at(api, agent, environment):
    sid = _create(api, agent, environment)["id"]
    api.post(
        f"/sessions/{sid}/events",
        {"events": [{"type": "user.message", "content": [{"type": "text", "text": "q"}]}]},
    )
    running = Event.objects.get(session_id=sid, type="session.status_running")
    after = api.get(f"/sessions/{sid}/events", **{"created_at[gte]": running.processed_at.isoformat()}).json()
    assert [e["type"] for e in after["data"]] == ["session.status_running"]  # the queued message has none


@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_to_an_idle_session_start_it_exactly_once(api, agent, environment, api_key):
    import threading

    from django.db import connection

    sid = _create(api, agent, environment)["id"]
    codes: list[int] = []

    def send() -> None:
        try:
            response = Api(api_key).post(
                f"/sessions/{sid}/events",
                {"events": [{"type": "user.message", "content": [{"type": "text", "text": "x"}]}]},
            )
            codes.append(response.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert codes == [200] * 6
    types = list(Event.objects.filter(session_id=sid).order_by("seq").values_list("type", flat=True))
    assert types.count("session.status_running") == 1 and types.count("user.message") == 6
    assert list(Event.objects.filter(session_id=sid).order_by("seq").values_list("seq", flat=True)) == list(
        range(1, 8)
    )


def test_the_session_object_validates_against_the_sdk_model_with_a_resolved_roster(
    api, workspace, environment
):
    from anthropic.types.beta import BetaManagedAgentsSession
    from anthropic.types.beta.sessions import BetaManagedAgentsSessionThread

    from agents.models import AgentVersion

    member = make_agent(workspace, name="researcher")
    lead = make_agent(workspace, name="lead")
    AgentVersion.objects.filter(agent=lead).update(
        definition={
            **AgentVersion.objects.get(agent=lead).definition,
            "multiagent": {
                "type": "coordinator",
                "agents": [{"type": "agent", "id": member.id, "version": 1}],
            },
        }
    )
    body = _create(
        api,
        lead,
        environment,
        budget={"type": "limit", "max_list_cost": {"amount": "2500", "currency": "USD"}},
        initial_events=[
            {
                "type": "user.define_outcome",
                "description": "d",
                "rubric": {"type": "text", "content": "Cite two sources."},
                "max_iterations": 5,
            }
        ],
    )
    session = BetaManagedAgentsSession.model_validate(body, strict=False)
    assert session.agent.multiagent is not None
    [resolved] = body["agent"]["multiagent"]["agents"]
    assert resolved["name"] == "researcher" and resolved["system"] and "multiagent" not in resolved
    assert body["budget"]["max_list_cost"]["amount"] == "2500"
    assert body["outcome_evaluations"][0]["description"] == "d"
    [thread] = api.get(f"/sessions/{body['id']}/threads").json()["data"]
    BetaManagedAgentsSessionThread.model_validate(thread)


def test_list_cost_adds_runtime_at_eight_cents_an_hour_to_token_cost(api, agent, environment):
    from sessions.services import session_list_cost

    sid = _create(api, agent, environment)["id"]
    Session.objects.filter(pk=sid).update(token_cost_micros=1_234_567, active_seconds=3600.0, input_tokens=7)
    session = Session.objects.get(pk=sid)
    assert session_list_cost(session) == {"amount": "131", "currency": "USD"}  # $1.234567 + $0.08
    session.web_search_requests = 100  # $10 per 1000 searches
    assert session_list_cost(session)["amount"] == "231"
    usage = api.get(f"/sessions/{sid}").json()["usage"]
    assert (
        usage["list_cost"]["amount"] == "131"
        and usage["input_tokens"] == 7
        and usage["active_seconds"] == 3600.0
    )


def test_outcome_evaluations_follow_the_evaluation_spans(api, agent, environment):
    from django.db import transaction

    define = {"type": "user.define_outcome", "description": "d", "rubric": {"type": "text", "content": "r"}}
    sid = _create(api, agent, environment, initial_events=[define])["id"]
    outcome_id = Event.objects.get(session_id=sid, type="user.define_outcome").payload["outcome_id"]
    with transaction.atomic():
        events_append(
            session=sid,
            events=[NewEvent("span.outcome_evaluation_start", {"outcome_id": outcome_id, "iteration": 0})],
        )
    assert api.get(f"/sessions/{sid}").json()["outcome_evaluations"][0]["result"] == "evaluating"
    with transaction.atomic():
        events_append(
            session=sid,
            events=[
                NewEvent(
                    "span.outcome_evaluation_end",
                    {"outcome_id": outcome_id, "iteration": 1, "result": "satisfied", "explanation": "ok"},
                )
            ],
        )
    [listed] = api.get("/sessions").json()["data"]
    [evaluation] = listed["outcome_evaluations"]
    assert (evaluation["result"], evaluation["iteration"], evaluation["explanation"]) == (
        "satisfied",
        1,
        "ok",
    )
    assert evaluation["completed_at"] is not None


def test_vault_ids_must_name_vaults_of_the_workspace(api, agent, environment, workspace):
    from api.ids import new_id
    from vaults.models import Vault

    mine = Vault.objects.create(id=new_id("vlt"), workspace=workspace, display_name="mine")
    theirs = Vault.objects.create(
        id=new_id("vlt"), workspace=Workspace.objects.create(name="x"), display_name="t"
    )
    assert _create(api, agent, environment, vault_ids=[mine.pk])["vault_ids"] == [mine.pk]
    body = {"agent": agent.id, "environment_id": environment.id}
    assert theirs.pk in _error(api.post("/sessions", {**body, "vault_ids": [theirs.pk]}), 404)
    _error(api.post("/sessions", {**body, "vault_ids": [mine.pk, mine.pk]}), 400)
    assert Session.objects.count() == 1


def test_budget_updates_follow_the_rules(api, agent, environment):
    def budget(amount: str) -> dict[str, Any]:
        return {"type": "limit", "max_list_cost": {"amount": amount, "currency": "USD"}}

    plain = _create(api, agent, environment)["id"]
    response = api.post(f"/sessions/{plain}", {"budget": budget("100")})
    _error(response, 400)
    assert response.json()["error"]["details"]["error_code"] == "budget_create_only"
    sid = _create(api, agent, environment, budget=budget("100"))["id"]
    Session.objects.filter(pk=sid).update(token_cost_micros=2_000_000)  # $2.00 spent
    _error(api.post(f"/sessions/{sid}", {"budget": budget("150")}), 400)
    assert api.post(f"/sessions/{sid}", {"budget": budget("500")}).json()["budget"] == budget("500")
    assert api.post(f"/sessions/{sid}", {"budget": None}).json()["budget"] is None
    assert [
        e.payload for e in Event.objects.filter(session_id=sid, type="session.updated").order_by("seq")
    ] == [
        {"budget": budget("500")},
        {"budget": None},
    ]


def test_a_budget_needs_a_list_price_for_the_model(api, agent, environment):
    from agents.models import AgentVersion

    limit = {"type": "limit", "max_list_cost": {"amount": "100", "currency": "USD"}}
    current = AgentVersion.objects.filter(agent=agent).first().definition
    AgentVersion.objects.filter(agent=agent).update(definition={**current, "model": {"id": "gpt-unpriced"}})
    response = api.post("/sessions", {"agent": agent.id, "environment_id": environment.id, "budget": limit})
    assert "gpt-unpriced" in _error(response, 400)
    assert response.json()["error"]["details"]["error_code"] == "model_not_budgetable"
    assert _create(api, agent, environment)["budget"] is None  # without a budget it is fine
    assert Session.objects.count() == 1


def test_a_terminated_session_accepts_no_events(api, agent, environment):
    sid = _create(api, agent, environment)["id"]
    Session.objects.filter(pk=sid).update(status="terminated")
    assert "terminated" in _error(
        api.post(f"/sessions/{sid}/events", {"events": [{"type": "user.interrupt"}]}), 409
    )


def test_agent_with_overrides_changes_only_this_sessions_snapshot(api, agent, environment):
    from anthropic.types.beta import BetaManagedAgentsSession

    overrides = {
        "type": "agent_with_overrides",
        "id": agent.id,
        "version": 1,
        "model": {"id": "claude-opus-4-7", "effort": {"type": "max"}, "inference_geo": "us"},
        "system": "Be brief.",
        "tools": [
            {"type": "custom", "name": "lookup", "description": "d", "input_schema": {"type": "object"}}
        ],
    }
    response = api.post("/sessions", {"agent": overrides, "environment_id": environment.id})
    assert response.status_code == 200, response.content
    body = response.json()
    BetaManagedAgentsSession.model_validate(body)
    snapshot = body["agent"]
    assert snapshot["version"] == 1 and snapshot["system"] == "Be brief."
    assert snapshot["model"]["id"] == "claude-opus-4-7" and snapshot["model"]["inference_geo"] == "us"
    assert snapshot["model"].get("effort") == agent.latest().definition["model"].get("effort")  # ignored
    assert [t["name"] for t in snapshot["tools"]] == ["lookup"]
    bad = {**overrides, "tools": [{"type": "custom", "name": "lookup"}]}
    message = _error(api.post("/sessions", {"agent": bad, "environment_id": environment.id}), 400)
    assert message.startswith("agent.tools[0]")
    unknown = {**overrides, "name": "renamed"}
    assert _error(
        api.post("/sessions", {"agent": unknown, "environment_id": environment.id}), 400
    ).startswith("agent.name")


def test_a_system_message_after_a_user_message_is_accepted(api, agent, environment):
    sid = _create(api, agent, environment)["id"]
    events = [
        {"type": "user.message", "content": [{"type": "text", "text": "q"}]},
        {"type": "system.message", "content": [{"type": "text", "text": "Answer in French."}]},
    ]
    response = api.post(f"/sessions/{sid}/events", {"events": events})
    assert response.status_code == 200, response.content
    assert [e["type"] for e in response.json()["data"]] == ["user.message", "system.message"]
