"""The Files API (spec 15) through Django's test client: storage, limits, listing, isolation."""

import hashlib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import IntegrityError
from django.test import Client
from django.utils import timezone

from accounts.models import Workspace
from accounts.services import api_key_create
from files import services
from files.models import File
from tests.files_fixtures import make_session


@pytest.fixture(autouse=True)
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    return tmp_path


@pytest.fixture
def client(api_key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {api_key}")


def upload(
    client: Client, name: str = "notes.txt", data: bytes = b"hello", ctype: str = "text/plain", **form: Any
):
    return client.post("/v1/files", {"file": SimpleUploadedFile(name, data, content_type=ctype), **form})


def stored_files(data_dir: Path) -> list[Path]:
    root = data_dir / "files"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_upload_stores_bytes_under_the_data_dir_and_metadata_in_the_db(client, workspace, data_dir):
    response = upload(client, name="../../etc/dir\\notes.txt", data=b"hello world")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"].startswith("file_")
    assert body == {
        "id": body["id"],
        "type": "file",
        "filename": "notes.txt",
        "mime_type": "text/plain",
        "size_bytes": 11,
        "created_at": body["created_at"],
        "downloadable": True,
        "expires_at": None,
        "scope": None,
    }
    path = data_dir / "files" / workspace.id / body["id"]
    assert path.read_bytes() == b"hello world"
    row = File.objects.get(id=body["id"])
    assert row.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert row.workspace_id == workspace.id


def test_download_returns_the_bytes_with_the_stored_content_type(client):
    file_id = upload(client, name="chart.png", data=b"\x89PNG\r\n", ctype="image/png").json()["id"]
    response = client.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content) == b"\x89PNG\r\n"
    assert 'filename="chart.png"' in response["Content-Disposition"]


def test_a_generic_content_type_is_refined_from_the_filename(client):
    body = upload(client, name="data.csv", data=b"a,b\n", ctype="application/octet-stream").json()
    assert body["mime_type"] == "text/csv"


def test_filenames_keep_only_the_last_component_and_empty_ones_get_a_name():
    assert services.clean_filename("a/b/c.txt", mime_type="text/plain") == "c.txt"
    assert services.clean_filename("C:\\Users\\x\\report.pdf", mime_type="application/pdf") == "report.pdf"
    assert services.clean_filename("dir/", mime_type="text/plain") == "unnamed.txt"
    assert services.clean_filename(None, mime_type="application/octet-stream") == "unnamed.bin"
    assert services.clean_filename("bad\x00name\n.txt", mime_type="text/plain") == "badname.txt"
    long = services.clean_filename("x" * 400 + ".json", mime_type="application/json")
    assert len(long) == 255 and long.endswith(".json")


def test_expires_in_seconds_sets_expires_at_and_is_range_checked(client):
    body = upload(client, expires_in_seconds="3600").json()
    assert body["expires_at"] is not None
    for bad in ("3599", "7776001", "soon"):
        response = upload(client, expires_in_seconds=bad)
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith("expires_in_seconds:")
    assert File.objects.count() == 1


def test_an_expired_file_keeps_its_metadata_but_not_its_content(client):
    file_id = upload(client, expires_in_seconds="3600").json()["id"]
    File.objects.filter(id=file_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    meta = client.get(f"/v1/files/{file_id}").json()
    assert meta["downloadable"] is False
    response = client.get(f"/v1/files/{file_id}/content")
    assert response.status_code == 404
    assert "expired" in response.json()["error"]["message"]
    assert services.file_purge_expired() == 1
    assert not File.objects.get(id=file_id).path.exists()


def test_a_body_over_the_limit_is_rejected_with_413_and_nothing_is_kept(client, settings, data_dir):
    settings.GALLEY_MAX_BODY_BYTES = 2048
    response = upload(client, data=b"x" * 4096)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    assert File.objects.count() == 0
    assert stored_files(data_dir) == []


def test_a_file_over_the_limit_is_rejected_while_streaming_and_nothing_is_kept(workspace, data_dir):
    with pytest.raises(services.ApiError) as info:
        services.file_create(
            workspace=workspace, filename="big.bin", content=[b"x" * 600] * 4, max_bytes=2000
        )
    assert info.value.status == 413
    assert stored_files(data_dir) == []


def test_a_failed_insert_removes_the_bytes(workspace, data_dir, monkeypatch):
    def fail(**_: Any) -> None:
        raise IntegrityError("forced")

    monkeypatch.setattr(File.objects, "create", fail)
    with pytest.raises(IntegrityError):
        services.file_create(workspace=workspace, filename="a.txt", content=[b"abc"])
    assert stored_files(data_dir) == []


def test_upload_without_a_file_part_names_the_field(client):
    response = client.post("/v1/files", {"other": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("file:")
    response = client.post("/v1/files", "{}", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("file:")


def test_list_pages_newest_first_with_cursors(client):
    ids = [upload(client, name=f"f{i}.txt").json()["id"] for i in range(3)]
    first = client.get("/v1/files?limit=2").json()
    assert [f["id"] for f in first["data"]] == [ids[2], ids[1]]
    assert first["next_page"].startswith("page_")
    second = client.get(f"/v1/files?limit=2&page={first['next_page']}").json()
    assert [f["id"] for f in second["data"]] == [ids[0]]
    assert second["next_page"] is None
    default = client.get("/v1/files").json()
    assert len(default["data"]) == 3 and default["next_page"] is None


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "page=nonsense"])
def test_list_rejects_bad_paging_with_a_400_naming_the_field(client, query):
    response = client.get(f"/v1/files?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["message"].split(":")[0] in ("limit", "page")


def test_list_by_ids_is_a_single_page_and_skips_unknown_ids(client):
    a = upload(client).json()["id"]
    b = upload(client).json()["id"]
    body = client.get(f"/v1/files?ids[]={a}&ids[]={b}&ids[]=file_missing&ids[]={a}").json()
    assert sorted(f["id"] for f in body["data"]) == sorted([a, b])
    assert body["next_page"] is None
    assert client.get(f"/v1/files?ids[]={a}&limit=5").status_code == 400
    many = "&".join(f"ids[]=file_{i}" for i in range(101))
    response = client.get(f"/v1/files?{many}")
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("ids:")


def test_delete_removes_the_row_and_the_bytes(client, data_dir, django_capture_on_commit_callbacks):
    file_id = upload(client).json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.delete(f"/v1/files/{file_id}")
    assert stored_files(data_dir) == []  # the bytes go only once the delete commits
    assert response.json() == {"id": file_id, "type": "file_deleted"}
    assert client.get(f"/v1/files/{file_id}").status_code == 404
    assert client.delete(f"/v1/files/{file_id}").status_code == 404


def test_files_of_another_workspace_are_not_found(client, db):
    file_id = upload(client).json()["id"]
    other = Workspace.objects.create(name="other")
    _key, raw = api_key_create(name="other", workspace=other)
    stranger = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    for response in (
        stranger.get(f"/v1/files/{file_id}"),
        stranger.get(f"/v1/files/{file_id}/content"),
        stranger.delete(f"/v1/files/{file_id}"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"
    assert stranger.get("/v1/files").json()["data"] == []
    assert stranger.get(f"/v1/files?ids[]={file_id}").json()["data"] == []
    assert File.objects.filter(id=file_id).exists()


def test_files_require_an_api_key(db):
    response = Client().get("/v1/files")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_captured_outputs_are_session_scoped_and_listed_by_scope_id(client, workspace, tmp_path):
    session = make_session(workspace)
    outputs = tmp_path / "outputs"
    (outputs / "reports").mkdir(parents=True)
    (outputs / "summary.md").write_text("# done\n")
    (outputs / "reports" / "q1.csv").write_text("a,b\n1,2\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the agent")
    os.symlink(secret, outputs / "leak.txt")
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "passwd").write_text("root:x:0:0")
    os.symlink(tmp_path / "host", outputs / "hostdir")
    os.mkfifo(outputs / "pipe")

    captured = services.file_capture_outputs(session=session, outputs_dir=outputs)
    assert sorted(f.filename for f in captured) == ["reports/q1.csv", "summary.md"]
    listed = client.get(f"/v1/files?scope_id={session.id}").json()["data"]
    assert sorted(f["filename"] for f in listed) == ["reports/q1.csv", "summary.md"]
    assert all(f["scope"] == {"type": "session", "id": session.id} for f in listed)
    csv = next(f for f in listed if f["filename"] == "reports/q1.csv")
    assert csv["mime_type"] == "text/csv"
    assert b"".join(client.get(f"/v1/files/{csv['id']}/content").streaming_content) == b"a,b\n1,2\n"

    # A second capture records only what changed.
    assert services.file_capture_outputs(session=session, outputs_dir=outputs) == []
    (outputs / "summary.md").write_text("# done, revised\n")
    again = services.file_capture_outputs(session=session, outputs_dir=outputs)
    assert [f.filename for f in again] == ["summary.md"]
    assert client.get("/v1/files?scope_id=sesn_other").json()["data"] == []
    assert services.file_capture_outputs(session=session, outputs_dir=tmp_path / "missing") == []


def test_an_outputs_dir_that_is_a_symlink_is_not_captured(workspace, tmp_path):
    session = make_session(workspace)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.txt").write_text("host file")
    os.symlink(tmp_path / "elsewhere", tmp_path / "outputs")
    assert services.file_capture_outputs(session=session, outputs_dir=tmp_path / "outputs") == []
    assert File.objects.count() == 0
