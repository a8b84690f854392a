"""Healthcheck items (self-hosted-worker.md §B): the console's "Check workers" queues one, a worker
polls, acks and stops it, and the section shows who answered and how long it took, or that no
worker answered within GALLEY_HEALTHCHECK_TIMEOUT_SECONDS. In process, through the /v1 routes."""

import base64
import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Role
from selfhosted.models import WorkItem, WorkKind, WorkState
from selfhosted.services import environment_key_create, healthcheck_latest, work_ensure
from tests.console_factories import client_for
from tests.session_fixtures import make_environment

pytestmark = pytest.mark.django_db


@pytest.fixture
def env(workspace):  # type: ignore[no-untyped-def]
    return make_environment(workspace, name="laptops", self_hosted=True)


def _worker(env: Any) -> Client:
    _key, raw = environment_key_create(environment=env, name="box")
    return Client(headers={"Authorization": f"Bearer {raw}", "Anthropic-Worker-ID": "box-1-abc123"})


def _token(secret: str) -> str:
    return str(json.loads(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)))["sessions_token"])


def _check(admin: Client, env: Any) -> str:
    response = admin.post(f"/environments/{env.id}/healthcheck", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    return response.content.decode()


def test_a_worker_acks_and_stops_a_healthcheck_and_the_section_says_who_and_how_long(env, workspace):
    admin = client_for(workspace, Role.ADMIN)
    assert "Check workers" in admin.get(f"/environments/{env.id}").content.decode()
    html = _check(admin, env)
    assert html.startswith('<section id="healthcheck"') and 'hx-trigger="every 1s"' in html
    assert 'data-status="waiting"' in html
    [item] = WorkItem.objects.filter(environment=env)
    assert item.kind == WorkKind.HEALTHCHECK and item.session_id == ""

    worker = _worker(env)
    base = f"/v1/environments/{env.id}/work"
    polled = worker.get(f"{base}/poll", {"block_ms": 100}).json()
    assert polled["id"] == item.id and polled["data"] == {"type": "healthcheck", "id": item.id}
    token = _token(polled["secret"])
    section = admin.get(f"/environments/{env.id}/healthcheck").content.decode()
    assert 'data-status="picked_up"' in section and "box-1-abc123" in section
    assert worker.post(f"{base}/{item.id}/ack").status_code == 200
    # The token of a healthcheck reaches no session.
    other = Client(headers={"Authorization": f"Bearer {token}"})
    assert other.get("/v1/sessions/sesn_nothing").status_code == 404
    stopped = other.post(
        f"{base}/{item.id}/stop", json.dumps({"force": True}), content_type="application/json"
    )
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"

    section = admin.get(f"/environments/{env.id}/healthcheck").content.decode()
    assert 'data-status="answered"' in section and "hx-trigger" not in section  # stops polling
    assert "box-1-abc123" in section
    result = healthcheck_latest(environment=env)
    assert result is not None and result.status == "answered" and result.took_ms is not None
    assert f"in {result.took_ms} ms" in section


def test_an_unanswered_healthcheck_times_out_and_is_never_handed_out_late(env, workspace, settings):
    settings.GALLEY_HEALTHCHECK_TIMEOUT_SECONDS = 30
    admin = client_for(workspace, Role.ADMIN)
    _check(admin, env)
    [item] = WorkItem.objects.filter(environment=env)
    # The clock: the check was queued 31 s ago and nobody polled since.
    WorkItem.objects.filter(pk=item.pk).update(created_at=timezone.now() - timedelta(seconds=31))
    section = admin.get(f"/environments/{env.id}/healthcheck").content.decode()
    assert 'data-status="no_answer"' in section and "no worker answered within 30 s" in section
    item.refresh_from_db()
    assert item.state == WorkState.STOPPED and item.timed_out
    polled = _worker(env).get(f"/v1/environments/{env.id}/work/poll", {"block_ms": 50})
    assert polled.status_code == 200 and polled.json() is None
    stats = _worker(env).get(f"/v1/environments/{env.id}/work/stats").json()
    assert stats["depth"] == 0 and stats["pending"] == 0


def test_a_healthcheck_picked_up_but_never_stopped_has_no_answer(env, workspace, settings):
    settings.GALLEY_HEALTHCHECK_TIMEOUT_SECONDS = 30
    admin = client_for(workspace, Role.ADMIN)
    _check(admin, env)
    worker = _worker(env)
    polled = worker.get(f"/v1/environments/{env.id}/work/poll", {"block_ms": 50}).json()
    worker.post(f"/v1/environments/{env.id}/work/{polled['id']}/ack")
    WorkItem.objects.filter(pk=polled["id"]).update(created_at=timezone.now() - timedelta(seconds=31))
    section = admin.get(f"/environments/{env.id}/healthcheck").content.decode()
    assert 'data-status="no_answer"' in section and "never stopped" in section and "box-1-abc123" in section


def test_only_admins_check_workers_and_a_plain_post_goes_back_to_the_page(env, workspace):
    editor = client_for(workspace, Role.EDITOR)
    page = editor.get(f"/environments/{env.id}").content.decode()
    assert 'id="healthcheck"' in page and "Check workers" not in page
    assert editor.post(f"/environments/{env.id}/healthcheck").status_code == 403
    assert not WorkItem.objects.exists()
    admin = client_for(workspace, Role.ADMIN)
    plain = admin.post(f"/environments/{env.id}/healthcheck")
    assert plain.status_code == 302 and plain["Location"] == f"/environments/{env.id}#healthcheck"
    assert WorkItem.objects.filter(kind=WorkKind.HEALTHCHECK).count() == 1
    cloud = make_environment(workspace, name="cloud")
    assert admin.post(f"/environments/{cloud.id}/healthcheck").status_code == 404


def test_an_archived_environment_refuses_a_check(env, workspace):
    env.archived_at = timezone.now()
    env.save(update_fields=["archived_at"])
    html = _check(client_for(workspace, Role.ADMIN), env)
    assert "is archived" in html and not WorkItem.objects.exists()


def test_a_healthcheck_does_not_count_as_a_sessions_live_item(env):
    WorkItem.objects.create(id="work_hc1", environment=env, session_id="", kind=WorkKind.HEALTHCHECK)
    item = work_ensure(environment=env, session_id="sesn_abc")
    assert item is not None and item.kind == WorkKind.SESSION
