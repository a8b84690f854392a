"""`manage.py serve` as a supervisor: N web processes on one port, a web or worker process that dies
comes back and sessions still finish, and an unreadable broker message is quarantined without
stopping the worker."""

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live import LiveGalley, live_galley
from tests.live_fixtures import until_idle
from tests.model_server import ScriptedModel, scripted_model, text

pytestmark = pytest.mark.slow


def _children(pid: int) -> dict[int, str]:
    """The direct children of `pid` and their command lines (Linux /proc)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def _web_pids(live: LiveGalley) -> list[int]:
    assert live.proc is not None
    return sorted(p for p, cmd in _children(live.proc.pid).items() if "galley.webserver" in cmd)


def _worker_pids(live: LiveGalley) -> list[int]:
    assert live.proc is not None
    return sorted(p for p, cmd in _children(live.proc.pid).items() if "celery" in cmd)


def _wait_for(predicate, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _turn(live: LiveGalley, text_in: str = "Hello") -> list[str]:
    client = live.client(timeout=60)
    agent = client.beta.agents.create(name="supervised", model="claude-sonnet-4-6")
    environment = client.beta.environments.create(name=f"supervised-{time.monotonic_ns()}")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": text_in}]}]
        )
        return [e.type for e in until_idle(stream)]


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModel]:
    with scripted_model(lambda body: text("Still here.")) as server:
        yield server


@pytest.fixture(scope="module")
def galley(model: ScriptedModel) -> Iterator[LiveGalley]:
    env = {"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": model.base_url}
    with live_galley(env, serve_args=("--web-workers", "3")) as server:
        yield server


def test_serve_spawns_the_requested_web_workers_on_one_port(galley: LiveGalley) -> None:
    assert len(_web_pids(galley)) == 3
    assert len(_worker_pids(galley)) == 1
    client = galley.client()
    for _ in range(6):  # whichever process accepts, the same API answers
        assert client.beta.agents.list().data is not None


def test_a_killed_worker_comes_back_and_sessions_finish(galley: LiveGalley) -> None:
    (old,) = _worker_pids(galley)
    os.kill(old, signal.SIGKILL)
    _wait_for(lambda: len(_worker_pids(galley)) == 1 and _worker_pids(galley) != [old])
    assert _turn(galley)[-1] == "session.status_idle"
    log = (galley.data_dir / "serve.log").read_text()
    assert f"worker-1 (pid {old}) exited with signal SIGKILL" in log


def test_killed_web_processes_come_back_and_sessions_finish(galley: LiveGalley) -> None:
    old = _web_pids(galley)
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: len(_web_pids(galley)) == 3 and not set(_web_pids(galley)) & set(old))
    _wait_for(lambda: _try_list(galley))
    assert _turn(galley)[-1] == "session.status_idle"
    log = (galley.data_dir / "serve.log").read_text()
    assert all(f"(pid {pid}) exited with signal SIGKILL" in log for pid in old)
    assert galley.proc is not None and galley.proc.poll() is None


def _try_list(live: LiveGalley) -> bool:
    try:
        live.client(timeout=5).beta.agents.list()
        return True
    except Exception:
        return False


@pytest.mark.skipif(bool(os.environ.get("REDIS_URL")), reason="embedded broker only")
def test_an_unreadable_broker_message_is_quarantined_and_the_worker_keeps_going(galley: LiveGalley) -> None:
    (worker,) = _worker_pids(galley)
    queue = galley.data_dir / "broker" / "queue"
    (queue / "0_corrupt.celery.msg").write_bytes(b'{"body": "trunc')
    (queue / "1_binary.celery.msg").write_bytes(b"\xff\xfe\x00garbage")
    quarantine = galley.data_dir / "broker" / "quarantine"
    _wait_for(lambda: quarantine.is_dir() and len(list(quarantine.iterdir())) == 2, timeout=30)
    assert sorted(p.name for p in quarantine.iterdir()) == ["0_corrupt.celery.msg", "1_binary.celery.msg"]
    assert _turn(galley)[-1] == "session.status_idle"
    assert _worker_pids(galley) == [worker]  # the same process: it never stopped
    log = (galley.data_dir / "serve.log").read_text()
    assert "broker message 0_corrupt.celery.msg cannot be read" in log


def test_serve_stops_only_when_told_and_stops_its_children(model: ScriptedModel) -> None:
    env = {"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": model.base_url}
    with live_galley(env, serve_args=("--web-workers", "2")) as live:
        assert live.proc is not None
        children = list(_children(live.proc.pid))
        assert len(children) == 3
        live.proc.send_signal(signal.SIGTERM)
        assert live.proc.wait(timeout=30) == 0
        assert not any(Path(f"/proc/{pid}").exists() and _is_running(pid) for pid in children)


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
