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
