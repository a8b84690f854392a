"""Environment keys and the work queue through the /v1 routes (spec 4), in process."""

import base64
import json
from typing import Any

import pytest
from django.db import transaction
from django.test import Client

from selfhosted.models import WorkItem
from selfhosted.services import environment_key_create, environment_key_revoke, work_claim
from sessions.services import NewEvent, events_append
from tests.concurrency import race
from tests.session_fixtures import make_agent, make_environment

pytestmark = pytest.mark.django_db


class Api:
    def __init__(self, raw_key: str) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {raw_key}"}

    def get(self, path: str, headers: dict[str, str] | None = None, **query: Any) -> Any:
        return self.client.get(f"/v1{path}", query, headers={**self.headers, **(headers or {})})

    def post(self, path: str, body: Any = None, query: str = "") -> Any:
        data = json.dumps(body) if body is not None else ""
        return self.client.post(
            f"/v1{path}{query}", data, content_type="application/json", headers=self.headers
        )


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["type"] == "error" and body["request_id"].startswith("req_")
    return dict(body["error"])


def _token(secret: str) -> str:
    return str(json.loads(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)))["sessions_token"])


@pytest.fixture
def env(workspace):  # type: ignore[no-untyped-def]
    return make_environment(workspace, name="mine", self_hosted=True)


@pytest.fixture
def key(env) -> str:  # type: ignore[no-untyped-def]
    return environment_key_create(environment=env, name="worker")[1]


@pytest.fixture
def admin(api_key: str) -> Api:
    return Api(api_key)


@pytest.fixture
def worker(key: str) -> Api:
    return Api(key)


@pytest.fixture
def session_id(admin, workspace, env) -> str:  # type: ignore[no-untyped-def]
    agent = make_agent(workspace)
    response = admin.post("/sessions", {"agent": agent.id, "environment_id": env.id})
    assert response.status_code == 200, response.content
    return str(response.json()["id"])


def _claimed(worker: Api, env_id: str) -> dict[str, Any]:
    response = worker.get(f"/environments/{env_id}/work/poll", headers={"Anthropic-Worker-ID": "host-1"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body is not None
    return dict(body)


def test_creating_a_session_enqueues_one_item_that_a_poll_hands_out_once(worker, env, session_id):
    item = _claimed(worker, env.id)
    assert item["type"] == "work" and item["state"] == "queued"
    assert item["data"] == {"type": "session", "id": session_id} and item["environment_id"] == env.id
    assert _token(item["secret"]).startswith("sk-galley-work-")
    again = worker.get(f"/environments/{env.id}/work/poll", block_ms=50)
    assert again.status_code == 200 and again.json() is None  # handed out, not yet acknowledged
    assert WorkItem.objects.get(pk=item["id"]).worker_id == "host-1"
    stats = worker.get(f"/environments/{env.id}/work/stats").json()
    assert stats["type"] == "work_queue_stats"
    assert (stats["depth"], stats["pending"], stats["workers_polling"]) == (0, 1, 1)
    assert stats["oldest_queued_at"] is not None


def test_poll_parameters_are_checked(worker, env):
    for value in ("0", "1000", "-1", "soon"):
        message = _error(worker.get(f"/environments/{env.id}/work/poll", block_ms=value), 400)["message"]
        assert "block_ms" in message
    assert worker.get(f"/environments/{env.id}/work/poll").json() is None  # non-blocking, empty


def test_keys_authorize_their_environment_only(admin, worker, key, env, workspace, session_id):
    assert _error(Api("sk-galley-env-nope").get(f"/environments/{env.id}/work/stats"), 401)
    other = make_environment(workspace, name="other", self_hosted=True)
    error = _error(worker.get(f"/environments/{other.id}/work/stats"), 404)
    assert "environment" in error["message"].lower()
    assert _error(worker.get("/agents"), 401)  # a worker credential reaches nothing else
    assert _error(worker.get("/sessions"), 401)
    assert worker.get(f"/sessions/{session_id}").status_code == 200
    [env_key] = env.keys.all()
    environment_key_revoke(key=env_key)
    assert _error(worker.get(f"/environments/{env.id}/work/stats"), 401)
    assert _error(worker.get(f"/sessions/{session_id}"), 401)


def test_a_key_of_another_environment_does_not_see_its_sessions(admin, workspace, session_id):
    other = make_environment(workspace, name="other", self_hosted=True)
    foreign = Api(environment_key_create(environment=other, name="w")[1])
    assert _error(foreign.get(f"/sessions/{session_id}"), 404)
    assert _error(foreign.get(f"/sessions/{session_id}/events"), 404)


def test_keys_are_only_for_self_hosted_environments(workspace):
    from api.errors import ApiError

    cloud = make_environment(workspace, name="cloud")
    with pytest.raises(ApiError) as caught:
        environment_key_create(environment=cloud, name="w")
    assert "not self_hosted" in caught.value.message


def test_ack_heartbeat_and_stop_follow_the_lease(worker, env, session_id):
    item = _claimed(worker, env.id)
    base = f"/environments/{env.id}/work/{item['id']}"
    token = Api(_token(item["secret"]))
    acked = worker.post(base + "/ack").json()
    assert acked["state"] == "starting" and acked["acknowledged_at"] is not None
    first = token.post(base + "/heartbeat", query="?expected_last_heartbeat=NO_HEARTBEAT").json()
    assert first["type"] == "work_heartbeat" and first["lease_extended"] is True
    assert first["state"] == "active" and first["ttl_seconds"] > 0
    wrong = _error(token.post(base + "/heartbeat", query="?expected_last_heartbeat=NO_HEARTBEAT"), 412)
    assert wrong["details"]["error_code"] == "heartbeat_precondition_failed"
    assert wrong["details"]["current_state"] == {
        "state": "active",
        "ttl_seconds": first["ttl_seconds"],
        "last_heartbeat": first["last_heartbeat"],
        "lease_extended": False,
    }
    second = token.post(base + "/heartbeat", query=f"?expected_last_heartbeat={first['last_heartbeat']}")
    assert second.status_code == 200 and second.json()["last_heartbeat"] != first["last_heartbeat"]
    assert token.get(f"/sessions/{session_id}").status_code == 200
    graceful = worker.post(base + "/stop", {}).json()
    assert graceful["state"] == "stopping" and graceful["stop_requested_at"] is not None
    # Once stopping the value is not compared, and the lease is no longer extended.
    beat = token.post(base + "/heartbeat", query="?expected_last_heartbeat=whatever").json()
    assert beat["lease_extended"] is False and beat["state"] == "stopping"
    stopped = token.post(base + "/stop", {"force": True}).json()
    assert stopped["state"] == "stopped" and stopped["stopped_at"] is not None
    assert "already stopped" in _error(worker.post(base + "/stop", {"force": True}), 409)["message"]
    assert _error(token.get(f"/sessions/{session_id}"), 401)  # the token expired with the item


def test_a_worker_holding_a_session_nobody_used_is_told_to_stop(worker, env, session_id, settings):
    settings.GALLEY_WORK_UNUSED_SECONDS = 0
    item = _claimed(worker, env.id)
    base = f"/environments/{env.id}/work/{item['id']}"
    worker.post(base + "/ack")
    first = worker.post(base + "/heartbeat", query="?expected_last_heartbeat=NO_HEARTBEAT").json()
    assert first["lease_extended"] is True  # the first beat starts the item
    second = worker.post(base + "/heartbeat", query=f"?expected_last_heartbeat={first['last_heartbeat']}")
    assert second.json()["state"] == "stopping" and second.json()["lease_extended"] is False
    worker.post(base + "/stop", {"force": True})
    say = {"type": "user.message", "content": [{"type": "text", "text": "hi"}]}
    assert Api(worker.headers["Authorization"][7:]).post(f"/sessions/{session_id}/events", {"events": [say]})
    assert sorted(WorkItem.objects.filter(session_id=session_id).values_list("state", flat=True)) == [
        "queued",
        "stopped",
    ]


def test_an_unacknowledged_item_is_reclaimed_and_the_old_token_loses_the_lease(worker, env, session_id):
    first = _claimed(worker, env.id)
    assert worker.get(f"/environments/{env.id}/work/poll", reclaim_older_than_ms=60000).json() is None
    second = worker.get(f"/environments/{env.id}/work/poll", reclaim_older_than_ms=0).json()
    assert second["id"] == first["id"] and second["secret"] != first["secret"]
    base = f"/environments/{env.id}/work/{first['id']}"
    assert worker.post(base + "/ack").json()["state"] == "starting"
    old, new = Api(_token(first["secret"])), Api(_token(second["secret"]))
    lost = _error(old.post(base + "/heartbeat", query="?expected_last_heartbeat=NO_HEARTBEAT"), 412)
    assert lost["details"]["error_code"] == "heartbeat_precondition_failed"
    assert _error(old.get(f"/sessions/{session_id}"), 401)
    assert new.post(base + "/heartbeat", query="?expected_last_heartbeat=NO_HEARTBEAT").json()[
        "lease_extended"
    ]
    assert _error(old.post(base + "/stop", {"force": True}), 409)  # cannot stop the new holder's item
    assert WorkItem.objects.get(pk=first["id"]).state == "active"


def test_an_item_whose_lease_ran_out_is_handed_out_again(worker, env, session_id):
    from datetime import timedelta

    from django.utils import timezone

    item = _claimed(worker, env.id)
    base = f"/environments/{env.id}/work/{item['id']}"
    worker.post(base + "/ack")
    worker.post(base + "/heartbeat", query="?expected_last_heartbeat=NO_HEARTBEAT")
    assert worker.get(f"/environments/{env.id}/work/poll").json() is None
    WorkItem.objects.filter(pk=item["id"]).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    again = worker.get(f"/environments/{env.id}/work/poll").json()
    assert again["id"] == item["id"] and again["state"] == "queued"


def test_list_retrieve_and_update_take_the_credentials_the_sdk_documents(admin, worker, env, session_id):
    item = _claimed(worker, env.id)
    listed = worker.get(f"/environments/{env.id}/work").json()
    assert [w["id"] for w in listed["data"]] == [item["id"]] and listed["next_page"] is None
    assert listed["data"][0]["secret"] is None  # only the poll carries it
    assert _error(admin.get(f"/environments/{env.id}/work"), 403)
    assert _error(worker.get(f"/environments/{env.id}/work/{item['id']}"), 403)
    assert admin.get(f"/environments/{env.id}/work/{item['id']}").json()["id"] == item["id"]
    updated = admin.post(f"/environments/{env.id}/work/{item['id']}", {"metadata": {"a": "1", "b": "2"}})
    assert updated.json()["metadata"] == {"a": "1", "b": "2"}
    patched = admin.post(f"/environments/{env.id}/work/{item['id']}", {"metadata": {"a": None}}).json()
    assert patched["metadata"] == {"b": "2"}
    bad = _error(admin.post(f"/environments/{env.id}/work/{item['id']}", {"metadata": {"a": 1}}), 400)
    assert bad["details"]["error_code"] == "invalid_metadata"
    assert "work_nope" in _error(admin.get(f"/environments/{env.id}/work/work_nope"), 404)["message"]


def test_a_cloud_environment_has_no_work_queue(admin, workspace):
    cloud = make_environment(workspace, name="cloud")
    assert "not self_hosted" in _error(admin.get(f"/environments/{cloud.id}/work/stats"), 400)["message"]


@pytest.mark.django_db(transaction=True)
def test_two_polls_racing_for_one_item_get_it_once(env, session_id):
    outcomes = race(lambda: work_claim(environment=env, worker_id="w", reclaim_ms=5000), threads=4)
    assert sum(1 for o in outcomes if o is not None) == 1


def test_a_second_answer_to_a_tool_call_is_refused_and_nothing_is_appended(admin, worker, session_id):
    with transaction.atomic():
        [use] = events_append(
            session=session_id,
            events=[
                NewEvent("agent.tool_use", {"name": "bash", "input": {}, "evaluated_permission": "allow"})
            ],
        )
    answer = {"type": "user.tool_result", "tool_use_id": use.id, "content": [{"type": "text", "text": "ok"}]}
    assert worker.post(f"/sessions/{session_id}/events", {"events": [answer]}).status_code == 200
    before = admin.get(f"/sessions/{session_id}/events").json()["data"]
    error = _error(worker.post(f"/sessions/{session_id}/events", {"events": [answer]}), 409)
    assert use.id in error["message"] and "already answered" in error["message"]
    unknown = {**answer, "tool_use_id": "sevt_nope"}
    assert (
        "sevt_nope"
        in _error(worker.post(f"/sessions/{session_id}/events", {"events": [unknown]}), 409)["message"]
    )
    assert admin.get(f"/sessions/{session_id}/events").json()["data"] == before


def test_deleting_or_archiving_the_session_stops_its_item(admin, worker, env, session_id):
    item = _claimed(worker, env.id)
    assert admin.post(f"/sessions/{session_id}/archive").status_code == 200
    assert WorkItem.objects.get(pk=item["id"]).state == "stopped"
    heartbeat = worker.post(
        f"/environments/{env.id}/work/{item['id']}/heartbeat", query="?expected_last_heartbeat=NO_HEARTBEAT"
    ).json()
    assert heartbeat["state"] == "stopped" and heartbeat["lease_extended"] is False


def test_the_environment_object_reports_no_sandbox_for_self_hosted(admin, env):
    body = admin.get(f"/environments/{env.id}").json()
    assert body["config"] == {"type": "self_hosted"}
    assert not {"build_status", "build_log", "sandbox_backend", "sandbox_unsafe"} & set(body)


def test_create_environment_key_prints_the_raw_key_last(env):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("create_environment_key", env.id, "laptop", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    assert raw.startswith("sk-galley-env-")
    [stored] = env.keys.all()
    assert stored.name == "laptop" and raw not in stored.key_hash and stored.hint == raw[-4:]


def test_a_worker_downloads_skills_with_its_own_credential(admin, worker, workspace):
    """The SDK's worker fetches a session's skills (lib/environments/_skills.py) with the environment
    key or the item's sessions token; every other skills route still wants an API key."""
    import io
    import zipfile

    from skills import services as skill_services

    md = b"---\nname: notes\ndescription: Team notes.\n---\nRead me.\n"
    skill = skill_services.skill_create(
        workspace=workspace, uploads=[("notes/SKILL.md", len(md), io.BytesIO(md))], display_name=None
    )
    version = skill.latest_version_id
    got = worker.get(f"/skills/{skill.pk}/versions/{version}")
    assert got.status_code == 200, got.content
    content = worker.get(f"/skills/{skill.pk}/versions/{version}/content")
    assert content.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(content.content)).read("notes/SKILL.md").startswith(b"---")
    assert worker.get("/skills").status_code == 401
    assert worker.get(f"/skills/{skill.pk}").status_code == 401


def test_a_reclaimed_items_old_token_is_expired_on_the_memory_routes(admin, worker, env, workspace):
    from memory import services as memory

    store = memory.store_create(workspace=workspace, body={"name": "notes"})
    memory.memory_create(store=store, path="/a.md", content="a", actor=None)
    agent = make_agent(workspace)
    response = admin.post(
        "/sessions",
        {
            "agent": agent.id,
            "environment_id": env.id,
            "resources": [{"type": "memory_store", "memory_store_id": store.pk}],
        },
    )
    assert response.status_code == 200, response.content
    first = _claimed(worker, env.id)
    old = Api(_token(first["secret"]))
    listed = old.get(f"/memory_stores/{store.pk}/memories")
    assert listed.status_code == 200 and [m["path"] for m in listed.json()["data"]] == ["/a.md"]
    second = worker.get(f"/environments/{env.id}/work/poll", reclaim_older_than_ms=0).json()
    assert second["id"] == first["id"]
    error = _error(old.get(f"/memory_stores/{store.pk}/memories"), 401)
    assert "expired" in error["message"]
    made = old.post(f"/memory_stores/{store.pk}/memories", {"path": "/b.md", "content": "late"})
    assert _error(made, 401)
    new = Api(_token(second["secret"]))
    assert new.get(f"/memory_stores/{store.pk}/memories").status_code == 200
    assert not memory.Memory.objects.filter(store=store, path="/b.md").exists()
