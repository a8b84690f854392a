"""Session resources inside the sandbox: a file resource is mounted read-only at its mount path, and
what the agent writes to /mnt/session/outputs becomes a session-scoped file."""

import pytest

from files import services as files
from files.models import File
from tests.sandbox_fixtures import run

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db]


def test_a_file_resource_is_readable_but_not_writable_inside(make_sandbox_session):
    session = make_sandbox_session()
    upload = files.file_create(workspace=session.workspace, filename="data.csv", content=[b"a,b\n1,2\n"])
    files.session_resources_attach(session=session, resources=[{"type": "file", "file_id": upload.id}])
    path = f"/mnt/session/uploads/{upload.id}"
    out = run(session, "bash", command=f"cat {path}; echo more >> {path} 2>&1; echo rc=$?")
    text = out.content[0]["text"]
    assert "a,b\n1,2" in text and "rc=1" in text
    read = run(session, "read", file_path=path)
    assert not read.is_error and "1,2" in read.content[0]["text"]
    assert upload.path.read_bytes() == b"a,b\n1,2\n"


def test_a_resource_added_later_is_mounted_on_the_next_call(make_sandbox_session):
    session = make_sandbox_session()
    run(session, "bash", command="cd /tmp && export KEEP=yes")
    upload = files.file_create(workspace=session.workspace, filename="late.txt", content=[b"late"])
    files.session_resources_attach(
        session=session,
        resources=[{"type": "file", "file_id": upload.id, "mount_path": "/workspace/late.txt"}],
    )
    out = run(session, "bash", command="cat /workspace/late.txt; echo; pwd; echo $KEEP")
    assert out.content[0]["text"].split() == ["late", "/tmp", "yes"]


def test_files_written_to_outputs_are_captured_as_session_files(make_sandbox_session):
    session = make_sandbox_session()
    out = run(
        session,
        "bash",
        command="mkdir -p /mnt/session/outputs/charts && echo 42 > /mnt/session/outputs/charts/r.txt",
    )
    assert not out.is_error, out.content
    [captured] = File.objects.filter(scope_id=session.id)
    assert captured.filename.endswith("r.txt") and captured.path.read_bytes() == b"42\n"
    run(session, "bash", command="true")  # unchanged: not recorded twice
    assert File.objects.filter(scope_id=session.id).count() == 1
