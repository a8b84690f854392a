"""The console page of a self_hosted environment: keys (shown once, POST-redirect-GET), the queue
and its workers."""

import pytest

from accounts.models import Role
from selfhosted.models import EnvironmentKey, WorkItem
from selfhosted.services import environment_key_authenticate, work_claim, worker_poll_record
from tests.console_factories import client_for
from tests.session_fixtures import make_environment

pytestmark = pytest.mark.django_db


def test_an_admin_creates_a_key_seen_once_and_revokes_it(workspace):
    env = make_environment(workspace, name="laptops", self_hosted=True)
    admin = client_for(workspace, Role.ADMIN)
    created = admin.post(f"/environments/{env.id}/keys", {"name": "my laptop"})
    assert created.status_code == 302 and created["Location"] == f"/environments/{env.id}#keys"
    page = admin.get(f"/environments/{env.id}").content.decode()
    [key] = EnvironmentKey.objects.filter(environment=env)
    raw = page.split('id="raw-env-key">')[1].split("<")[0]
    assert raw.startswith("sk-galley-env-") and environment_key_authenticate(raw) == key
    assert "my laptop" in page and f"…{key.hint}" in page
    assert raw not in admin.get(f"/environments/{env.id}").content.decode()  # shown once
    assert "Build" not in page and "Packages" not in page  # no sandbox or package build here
    revoked = admin.post(f"/environments/{env.id}/keys/{key.id}/revoke")
    assert revoked.status_code == 302
    assert environment_key_authenticate(raw) is None
    assert "revoked" in admin.get(f"/environments/{env.id}").content.decode()


def test_a_bad_key_name_is_explained(workspace):
    env = make_environment(workspace, name="laptops", self_hosted=True)
    admin = client_for(workspace, Role.ADMIN)
    admin.post(f"/environments/{env.id}/keys", {"name": "  "})
    assert not EnvironmentKey.objects.exists()
    assert "Key name: must be 1-255 characters" in admin.get(f"/environments/{env.id}").content.decode()


def test_editors_see_the_queue_but_cannot_create_keys(workspace):
    env = make_environment(workspace, name="laptops", self_hosted=True)
    item = WorkItem.objects.create(id="work_console1", environment=env, session_id="sesn_console1")
    worker_poll_record(environment=env, worker_id="box-1-abc")
    work_claim(environment=env, worker_id="box-1-abc", reclaim_ms=5000)
    editor = client_for(workspace, Role.EDITOR)
    page = editor.get(f"/environments/{env.id}").content.decode()
    assert item.id in page and "box-1-abc" in page and "1 worker polling" in page
    assert f'action="/environments/{env.id}/keys"' not in page
    assert editor.post(f"/environments/{env.id}/keys", {"name": "x"}).status_code == 403
    partial = editor.get(f"/environments/{env.id}/work", HTTP_HX_REQUEST="true").content.decode()
    assert partial.startswith('<section id="work"') and item.id in partial


def test_cloud_environments_have_no_key_routes(workspace):
    env = make_environment(workspace, name="cloud")
    admin = client_for(workspace, Role.ADMIN)
    assert admin.post(f"/environments/{env.id}/keys", {"name": "x"}).status_code == 404
    assert "Build" in admin.get(f"/environments/{env.id}").content.decode()


def _self_hosted_session():  # type: ignore[no-untyped-def]
    from tests.harness_helpers import make_session

    session = make_session()
    session.environment.config = {"type": "self_hosted"}
    session.environment.save(update_fields=["config"])
    return session


def test_a_session_no_worker_took_says_since_when_it_waits_and_stops_once_one_does(workspace):
    from datetime import timedelta

    from django.utils import timezone

    from selfhosted.services import work_ack, work_heartbeat

    session = _self_hosted_session()
    item = WorkItem.objects.create(id="work_wait1", environment=session.environment, session_id=session.pk)
    viewer = client_for(workspace, Role.VIEWER)
    page = viewer.get(f"/sessions/{session.pk}").content.decode()
    assert 'id="worker-wait"' in page and "Waiting for a worker since" in page
    assert timezone.localtime(item.created_at).strftime("%Y-%m-%d %H:%M:%S") in page
    assert "0 workers polling" in page

    claimed, _token = work_claim(environment=session.environment, worker_id="box-9", reclaim_ms=5000)
    work_ack(item=claimed)
    work_heartbeat(item=claimed, expected="NO_HEARTBEAT", desired_ttl=None, generation=claimed.generation)
    line = viewer.get(f"/sessions/{session.pk}/worker-wait", HTTP_HX_REQUEST="true").content.decode()
    assert line.startswith('<p id="worker-wait"') and " hidden" in line and "Waiting" not in line

    # The worker died: once its lease ran out, the session waits again, since then.
    expired = timezone.now() - timedelta(seconds=5)
    WorkItem.objects.filter(pk=item.pk).update(lease_expires_at=expired)
    line = viewer.get(f"/sessions/{session.pk}/worker-wait").content.decode()
    assert "Waiting for a worker since" in line and timezone.localtime(expired).strftime("%H:%M:%S") in line


def test_cloud_sessions_have_no_worker_line(workspace):
    from tests.harness_helpers import make_session

    session = make_session()
    viewer = client_for(workspace, Role.VIEWER)
    assert 'id="worker-wait"' not in viewer.get(f"/sessions/{session.pk}").content.decode()
    assert viewer.get(f"/sessions/{session.pk}/worker-wait").status_code == 404
