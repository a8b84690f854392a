"""The official SDK (strict response validation) against a live server: files and session resources."""

import json
import urllib.error
import urllib.request
from typing import Any

import anthropic
import pytest

from tests.files_fixtures import MAKE_SESSION_SHELL


def error_of(exc: anthropic.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict), body
    return dict(body["error"])


@pytest.fixture(scope="module")
def session_id(live: Any) -> str:
    # Sessions are created in the database directly: this suite tests resources, not session create.
    return live.manage("shell", "-c", MAKE_SESSION_SHELL).stdout.strip().splitlines()[-1]


def test_sdk_upload_list_retrieve_download_delete(live: Any) -> None:
    client = live.client()
    uploaded = client.beta.files.upload(file=("reports/notes.txt", b"hello", "text/plain"))
    assert uploaded.id.startswith("file_")
    assert uploaded.filename == "notes.txt"
    assert uploaded.mime_type == "text/plain"
    assert uploaded.size_bytes == 5
    assert uploaded.type == "file"
    assert uploaded.scope is None and uploaded.expires_at is None

    expiring = client.beta.files.upload(file=("later.bin", b"\x00\x01"), expires_in_seconds=3600)
    assert expiring.expires_at is not None and expiring.expires_at > expiring.created_at

    listed = [f.id for f in client.beta.files.list(limit=1)]  # auto-pagination follows next_page
    assert uploaded.id in listed and expiring.id in listed
    by_ids = client.beta.files.list(ids=[uploaded.id])
    assert [f.id for f in by_ids.data] == [uploaded.id]

    meta = client.beta.files.retrieve_metadata(uploaded.id)
    assert meta.id == uploaded.id and meta.downloadable is True

    content = client.beta.files.download(uploaded.id)
    assert content.read() == b"hello"
    assert content.http_response.headers["content-type"] == "text/plain"

    deleted = client.beta.files.delete(uploaded.id)
    assert deleted.id == uploaded.id and deleted.type == "file_deleted"
    with pytest.raises(anthropic.NotFoundError) as info:
        client.beta.files.retrieve_metadata(uploaded.id)
    assert error_of(info.value)["type"] == "not_found_error"


def test_sdk_upload_rejects_a_bad_expiry_naming_the_field(live: Any) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        live.client().beta.files.upload(file=("a.txt", b"a"), expires_in_seconds=10)
    assert error_of(info.value)["message"].startswith("expires_in_seconds:")


def test_sdk_upload_over_the_size_limit_is_413(live: Any) -> None:
    too_big = b"x" * (10 * 1024 * 1024 + 1)
    with pytest.raises(anthropic.APIStatusError) as info:
        live.client().beta.files.upload(file=("big.bin", too_big))
    assert info.value.status_code == 413
    assert error_of(info.value)["type"] == "request_too_large"


def test_sdk_session_resources_lifecycle(live: Any, session_id: str) -> None:
    client = live.client()
    file = client.beta.files.upload(file=("input.csv", b"a,b\n1,2\n", "text/csv"))

    added = client.beta.sessions.resources.add(session_id, type="file", file_id=file.id)
    assert added.id.startswith("sesrsc_")
    assert added.file_id == file.id
    assert added.mount_path == f"/mnt/session/uploads/{file.id}"

    custom = client.beta.sessions.resources.add(
        session_id, type="file", file_id=file.id, mount_path="/mnt/session/uploads/data.csv"
    )
    assert custom.mount_path == "/mnt/session/uploads/data.csv"

    repo = client.post(
        f"/v1/sessions/{session_id}/resources",
        body={
            "type": "github_repository",
            "url": "https://github.com/octo/demo",
            "authorization_token": "ghp_1",
        },
        cast_to=dict,
    )
    assert repo["mount_path"] == "/workspace/demo" and "authorization_token" not in repo

    listed = client.beta.sessions.resources.list(session_id)
    assert [r.id for r in listed.data] == [added.id, custom.id, repo["id"]]
    assert listed.next_page is None
    paged = [r.id for r in client.beta.sessions.resources.list(session_id, limit=1)]
    assert paged == [added.id, custom.id, repo["id"]]

    fetched = client.beta.sessions.resources.retrieve(repo["id"], session_id=session_id)
    assert fetched.type == "github_repository" and fetched.url == "https://github.com/octo/demo"
    rotated = client.beta.sessions.resources.update(
        repo["id"], session_id=session_id, authorization_token="ghp_2"
    )
    assert rotated.type == "github_repository" and rotated.updated_at >= fetched.updated_at
    with pytest.raises(anthropic.BadRequestError):
        client.beta.sessions.resources.update(added.id, session_id=session_id, authorization_token="x")

    gone = client.beta.sessions.resources.delete(custom.id, session_id=session_id)
    assert gone.id == custom.id and gone.type == "session_resource_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.resources.retrieve(custom.id, session_id=session_id)
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.resources.add("sesn_missing", type="file", file_id=file.id)


def test_a_malformed_multipart_body_gets_the_error_body_not_a_bare_400(live: Any) -> None:
    # Twisted (under Daphne) would answer this itself with an empty 400; Galley's server turns that off.
    boundary = "b0undary"
    request = urllib.request.Request(
        live.base_url + "/v1/files",
        data=f"--{boundary}--\r\n".encode(),
        method="POST",
        headers={"x-api-key": live.api_key, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400
    body = json.loads(info.value.read())
    assert body["type"] == "error" and body["error"]["message"].startswith("file:")


def test_sdk_lists_a_sessions_captured_outputs_by_scope_id(live: Any, session_id: str) -> None:
    capture = f"""
import tempfile
from pathlib import Path
from files.services import file_capture_outputs
from sessions.models import Session
with tempfile.TemporaryDirectory() as tmp:
    (Path(tmp) / "answer.json").write_text('{{"ok": true}}')
    print(len(file_capture_outputs(session=Session.objects.get(id="{session_id}"), outputs_dir=Path(tmp))))
"""
    assert live.manage("shell", "-c", capture).stdout.strip().splitlines()[-1] == "1"
    client = live.client()
    outputs = client.beta.files.list(scope_id=session_id).data
    assert [f.filename for f in outputs] == ["answer.json"]
    assert (
        outputs[0].scope is not None
        and outputs[0].scope.id == session_id
        and outputs[0].scope.type == "session"
    )
    assert outputs[0].mime_type == "application/json"
    assert client.beta.files.download(outputs[0].id).read() == b'{"ok": true}'
