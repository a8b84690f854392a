"""Session resources (spec 6): the /v1 router and the services session create uses."""

from typing import Any

import pytest
from django.test import Client

from accounts.models import Workspace
from accounts.services import api_key_create
from api.errors import ApiError
from files import services
from files.models import File, SessionResource
from sessions.models import Session
from tests.files_fixtures import make_session
from vaults import crypto

REPO = "https://github.com/octo-org/hello-world.git"


@pytest.fixture(autouse=True)
def data_dir(settings: Any, tmp_path):  # type: ignore[no-untyped-def]
    settings.DATA_DIR = tmp_path
    settings.GALLEY_VAULT_KEY_FILE = tmp_path / "vault.keys"
    crypto.reset_cache()
    yield tmp_path
    crypto.reset_cache()


@pytest.fixture
def client(api_key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {api_key}")


@pytest.fixture
def session(workspace: Workspace) -> Session:
    return make_session(workspace)


@pytest.fixture
def file(workspace: Workspace) -> File:
    return services.file_create(workspace=workspace, filename="data.csv", content=[b"a,b\n"])


def post(client: Client, path: str, body: dict[str, Any]) -> Any:
    return client.post(path, body, content_type="application/json")


def test_adding_a_file_resource_mounts_it_under_uploads_by_default(client, session, file):
    response = post(client, f"/v1/sessions/{session.id}/resources", {"type": "file", "file_id": file.id})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"].startswith("sesrsc_")
    assert body == {
        "id": body["id"],
        "type": "file",
        "file_id": file.id,
        "mount_path": f"/mnt/session/uploads/{file.id}",
        "created_at": body["created_at"],
        "updated_at": body["created_at"],
    }
    assert client.get(f"/v1/sessions/{session.id}/resources/{body['id']}").json() == body


def test_a_repository_resource_keeps_its_token_encrypted_and_never_returns_it(client, session):
    response = post(
        client,
        f"/v1/sessions/{session.id}/resources",
        {
            "type": "github_repository",
            "url": REPO,
            "authorization_token": "ghp_secret123",
            "checkout": {"type": "branch", "name": "main"},
        },
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["mount_path"] == "/workspace/hello-world"
    assert body["checkout"] == {"type": "branch", "name": "main"}
    assert body["url"] == REPO
    assert "ghp_secret123" not in response.content.decode()
    row = SessionResource.objects.get(id=body["id"])
    assert "ghp_secret123" not in (row.authorization_token_encrypted or "")
    assert services.session_resource_token(row) == "ghp_secret123"
    listed = client.get(f"/v1/sessions/{session.id}/resources")
    assert "ghp_secret123" not in listed.content.decode()


def test_updating_a_repository_rotates_its_token(client, session):
    rid = post(
        client, f"/v1/sessions/{session.id}/resources", {"type": "github_repository", "url": REPO}
    ).json()["id"]
    assert services.session_resource_token(SessionResource.objects.get(id=rid)) is None
    response = post(client, f"/v1/sessions/{session.id}/resources/{rid}", {"authorization_token": "ghp_new"})
    assert response.status_code == 200
    assert response.json()["checkout"] is None
    assert "ghp_new" not in response.content.decode()
    assert services.session_resource_token(SessionResource.objects.get(id=rid)) == "ghp_new"


def test_only_repositories_support_token_rotation(client, session, file):
    rid = post(client, f"/v1/sessions/{session.id}/resources", {"type": "file", "file_id": file.id}).json()[
        "id"
    ]
    response = post(client, f"/v1/sessions/{session.id}/resources/{rid}", {"authorization_token": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("authorization_token:")
    response = post(client, f"/v1/sessions/{session.id}/resources/{rid}", {})
    assert response.status_code == 400
    assert "authorization_token" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "file"}, "file_id"),
        ({"type": "file", "file_id": "x", "url": REPO}, "url"),
        ({"type": "github_repository", "url": "not a url"}, "url"),
        ({"type": "github_repository", "url": "https://user:pw@github.com/a/b"}, "url"),
        (
            {"type": "github_repository", "url": REPO, "checkout": {"type": "commit", "sha": "abc"}},
            "checkout.sha",
        ),
        ({"type": "github_repository", "url": REPO, "mount_path": "relative/dir"}, "mount_path"),
        ({"type": "github_repository", "url": REPO, "mount_path": "/workspace/../etc"}, "mount_path"),
        ({"type": "github_repository", "url": REPO, "mount_path": "/"}, "mount_path"),
        ({"type": "memory_store"}, "type"),
    ],
)
def test_bad_resources_are_rejected_naming_the_field(client, session, body, field):
    response = post(client, f"/v1/sessions/{session.id}/resources", body)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["message"].startswith(field + ":")
    assert SessionResource.objects.count() == 0


def test_unknown_files_and_sessions_are_not_found(client, session):
    response = post(
        client, f"/v1/sessions/{session.id}/resources", {"type": "file", "file_id": "file_missing"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["message"].startswith("file_id:")
    response = post(
        client, "/v1/sessions/sesn_missing/resources", {"type": "file", "file_id": "file_missing"}
    )
    assert response.status_code == 404
    assert client.get(f"/v1/sessions/{session.id}/resources/sesrsc_missing").status_code == 404


def test_sessions_and_files_of_another_workspace_are_not_found(client, session, db):
    other = Workspace.objects.create(name="other")
    foreign_file = services.file_create(workspace=other, filename="x.txt", content=[b"x"])
    response = post(
        client, f"/v1/sessions/{session.id}/resources", {"type": "file", "file_id": foreign_file.id}
    )
    assert response.status_code == 404
    _key, raw = api_key_create(name="other", workspace=other)
    stranger = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert stranger.get(f"/v1/sessions/{session.id}/resources").status_code == 404
    response = post(
        stranger, f"/v1/sessions/{session.id}/resources", {"type": "file", "file_id": foreign_file.id}
    )
    assert response.status_code == 404
    assert SessionResource.objects.count() == 0


def test_a_mount_path_is_used_once_per_session(client, session, file):
    post(client, f"/v1/sessions/{session.id}/resources", {"type": "file", "file_id": file.id})
    response = post(client, f"/v1/sessions/{session.id}/resources", {"type": "file", "file_id": file.id})
    assert response.status_code == 409
    assert response["x-should-retry"] == "false"
    assert response.json()["error"]["message"].startswith("mount_path:")


def test_attach_is_all_or_nothing_and_names_the_bad_entry(session, file):
    with pytest.raises(ApiError) as info:
        services.session_resources_attach(
            session=session,
            resources=[{"type": "file", "file_id": file.id}, {"type": "file", "file_id": "file_missing"}],
        )
    assert info.value.message.startswith("resources[1].file_id:")
    with pytest.raises(ApiError) as info:
        services.session_resources_attach(
            session=session,
            resources=[
                {"type": "file", "file_id": file.id, "mount_path": "/data/in"},
                {"type": "github_repository", "url": REPO, "mount_path": "/data/in"},
            ],
        )
    assert info.value.status == 409 and info.value.message.startswith("resources[1].mount_path:")
    assert SessionResource.objects.count() == 0


def test_attach_returns_rows_and_the_session_wire_lists_them_in_order(session, file):
    rows = services.session_resources_attach(
        session=session,
        resources=[
            {"type": "file", "file_id": file.id, "mount_path": "/data/input.csv"},
            {"type": "github_repository", "url": REPO, "checkout": {"type": "commit", "sha": "A" * 40}},
        ],
    )
    assert [r.type for r in rows] == ["file", "github_repository"]
    wire = services.session_resources_wire(session)
    assert [w["id"] for w in wire] == [r.id for r in rows]
    assert wire[0]["mount_path"] == "/data/input.csv"
    assert wire[1]["checkout"] == {"type": "commit", "sha": "a" * 40}
    assert services.session_resources_wire(make_session(session.workspace)) == []


def test_list_returns_everything_without_a_limit_and_pages_with_one(client, session, workspace):
    files = [services.file_create(workspace=workspace, filename=f"{i}.txt", content=[b"x"]) for i in range(3)]
    ids = [
        post(client, f"/v1/sessions/{session.id}/resources", {"type": "file", "file_id": f.id}).json()["id"]
        for f in files
    ]
    everything = client.get(f"/v1/sessions/{session.id}/resources").json()
    assert [r["id"] for r in everything["data"]] == ids and everything["next_page"] is None
    first = client.get(f"/v1/sessions/{session.id}/resources?limit=2").json()
    assert [r["id"] for r in first["data"]] == ids[:2]
    rest = client.get(f"/v1/sessions/{session.id}/resources?limit=2&page={first['next_page']}").json()
    assert [r["id"] for r in rest["data"]] == ids[2:] and rest["next_page"] is None
    assert client.get(f"/v1/sessions/{session.id}/resources?limit=1001").status_code == 400


def test_delete_removes_the_resource_but_not_the_file(client, session, file):
    rid = post(client, f"/v1/sessions/{session.id}/resources", {"type": "file", "file_id": file.id}).json()[
        "id"
    ]
    response = client.delete(f"/v1/sessions/{session.id}/resources/{rid}")
    assert response.json() == {"id": rid, "type": "session_resource_deleted"}
    assert client.get(f"/v1/sessions/{session.id}/resources/{rid}").status_code == 404
    assert File.objects.filter(id=file.id).exists()


def test_deleting_a_mounted_file_keeps_the_resource_naming_it(client, session, file):
    rid = post(client, f"/v1/sessions/{session.id}/resources", {"type": "file", "file_id": file.id}).json()[
        "id"
    ]
    assert client.delete(f"/v1/files/{file.id}").status_code == 200
    assert client.get(f"/v1/sessions/{session.id}/resources/{rid}").json()["file_id"] == file.id


def test_an_archived_session_cannot_change_its_resources(client, session, file):
    from django.utils import timezone

    Session.objects.filter(id=session.id).update(archived_at=timezone.now())
    response = post(client, f"/v1/sessions/{session.id}/resources", {"type": "file", "file_id": file.id})
    assert response.status_code == 400
    assert "archived" in response.json()["error"]["message"]


def test_deleting_a_session_deletes_its_resources(session, file):
    services.session_resources_attach(session=session, resources=[{"type": "file", "file_id": file.id}])
    session.delete()
    assert SessionResource.objects.count() == 0


def test_validate_checks_a_create_list_before_the_session_exists(workspace, file):
    services.session_resources_validate(workspace=workspace, resources=None)
    services.session_resources_validate(workspace=workspace, resources=[{"type": "file", "file_id": file.id}])
    with pytest.raises(ApiError) as info:
        services.session_resources_validate(workspace=workspace, resources=[{"type": "github_repository"}])
    assert info.value.message.startswith("resources[0].url:")
    with pytest.raises(ApiError) as info:
        services.session_resources_validate(
            workspace=workspace,
            resources=[{"type": "file", "file_id": file.id}, {"type": "file", "file_id": file.id}],
        )
    assert info.value.status == 409
    with pytest.raises(ApiError):
        services.session_resources_validate(workspace=workspace, resources={"type": "file"})


def test_wire_many_groups_resources_by_session(workspace, file):
    first, second = make_session(workspace), make_session(workspace)
    services.session_resources_attach(session=first, resources=[{"type": "file", "file_id": file.id}])
    wire = services.session_resources_wire_many([first.id, second.id])
    assert [r["file_id"] for r in wire[first.id]] == [file.id]
    assert wire[second.id] == []


def test_a_mount_path_taken_by_a_concurrent_request_is_a_409_not_a_500(client, session, file, monkeypatch):
    post(client, f"/v1/sessions/{session.id}/resources", {"type": "file", "file_id": file.id})
    # Force the race: this request does not see the other's row before inserting.
    monkeypatch.setattr(services, "_mount_paths_taken", lambda session: set())
    response = post(client, f"/v1/sessions/{session.id}/resources", {"type": "file", "file_id": file.id})
    assert response.status_code == 409
    assert response.json()["error"]["message"].startswith("mount_path:")
    assert SessionResource.objects.count() == 1


def test_mounts_give_the_sandbox_host_paths_and_the_clone_token(client, session, file):
    services.session_resources_attach(
        session=session,
        resources=[
            {"type": "file", "file_id": file.id},
            {"type": "github_repository", "url": REPO, "authorization_token": "ghp_x"},
        ],
    )
    file_mount, repo_mount = services.session_resource_mounts(session)
    assert file_mount.source == file.path and file_mount.source.read_bytes() == b"a,b\n"
    assert file_mount.mount_path == f"/mnt/session/uploads/{file.id}"
    assert (repo_mount.url, repo_mount.token, repo_mount.mount_path) == (
        REPO,
        "ghp_x",
        "/workspace/hello-world",
    )
    File.objects.filter(id=file.id).delete()
    assert services.session_resource_mounts(session)[0].source is None
