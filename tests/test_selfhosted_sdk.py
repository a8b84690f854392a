"""The official SDK's self-hosted worker, unmodified, against a live Galley: every built-in tool runs
on the worker's host (its workdir), never in a Galley sandbox, and the work item ends stopped."""

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.live import ROOT, LiveGalley, live_galley
from tests.model_server import ScriptedModel, scripted_model, text, tool_call
from tests.sandbox_fixtures import volume_mount

pytestmark = pytest.mark.slow

LEASE_SECONDS = 4  # short, so that a killed worker's item is reclaimed within the test


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModel]:
    with scripted_model() as server:
        yield server


@pytest.fixture(scope="module")
def galley(model: ScriptedModel) -> Iterator[LiveGalley]:
    env = {
        "ANTHROPIC_API_KEY": "sk-test",
        "ANTHROPIC_BASE_URL": model.base_url,
        "GALLEY_WORK_LEASE_SECONDS": str(LEASE_SECONDS),
        "GALLEY_SWEEP_SECONDS": "1",
    }
    with live_galley(env) as server:
        yield server


def _setup(galley: LiveGalley, tools: list[str] | None = None) -> tuple[anthropic.Anthropic, Any, Any, str]:
    client = galley.client()
    suffix = secrets.token_hex(3)
    names = tools or ["bash", "read", "write"]
    agent = client.beta.agents.create(
        name=f"sh-{suffix}",
        model="claude-sonnet-4-6",
        tools=[
            {
                "type": "agent_toolset_20260401",
                "default_config": {"enabled": False},
                "configs": [{"name": n, "enabled": True} for n in names],
            }
        ],
    )
    environment = client.beta.environments.create(name=f"sh-env-{suffix}", config={"type": "self_hosted"})
    key = (
        galley.manage("create_environment_key", environment.id, "test-worker").stdout.strip().splitlines()[-1]
    )
    return client, agent, environment, key


def _async_client(galley: LiveGalley, *, strict: bool = True, **options: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=galley.base_url,
        api_key="sk-unused",
        max_retries=0,
        _strict_response_validation=strict,
        **options,
    )


class BackgroundWorker:
    """`worker.run()` of the SDK's EnvironmentWorker on its own event loop, cancelled at the end.
    `strict=False` is the SDK's default client: the generated work type models only `session`
    items, so a strictly validating client cannot parse a `healthcheck` item the worker skips."""

    def __init__(
        self,
        galley: LiveGalley,
        *,
        strict: bool = True,
        client_options: Callable[[], dict[str, Any]] | None = None,
        **options: Any,
    ) -> None:
        self.galley = galley
        self.strict = strict
        self.client_options = client_options  # called on the worker's loop (an http client, say)
        self.options = options
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def run() -> None:
            extra = self.client_options() if self.client_options else {}
            client = _async_client(self.galley, strict=self.strict, **extra)
            worker = client.beta.environments.work.worker(**self.options)
            self.task = asyncio.current_task()
            await worker.run()

        try:
            self.loop.run_until_complete(run())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # noqa: BLE001 - surfaced by stop()
            self.error = exc
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def __enter__(self) -> "BackgroundWorker":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 10
        while self.task is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout=30)
        assert self.error is None, repr(self.error)


def _wait(predicate: Callable[[], Any], timeout: float = 90, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _events(client: anthropic.Anthropic, session_id: str) -> list[Any]:
    return list(client.beta.sessions.events.list(session_id, limit=1000))


def _idle_end_turn(client: anthropic.Anthropic, session_id: str) -> bool:
    if client.beta.sessions.retrieve(session_id).status != "idle":
        return False
    idles = [e for e in _events(client, session_id) if e.type == "session.status_idle"]
    return bool(idles) and idles[-1].stop_reason.type == "end_turn"


def _work_items(client: anthropic.Anthropic, environment_id: str, key: str) -> list[Any]:
    worker_client = anthropic.Anthropic(
        base_url=str(client.base_url), auth_token=key, max_retries=0, _strict_response_validation=True
    )
    worker_client.api_key = None
    return list(worker_client.beta.environments.work.list(environment_id))


def _message(client: anthropic.Anthropic, session_id: str, words: str) -> None:
    client.beta.sessions.events.send(
        session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": words}]}]
    )


def _results(events: list[Any]) -> dict[str, Any]:
    return {e.tool_use_id: e for e in events if e.type == "user.tool_result"}


def test_the_sdk_worker_runs_bash_read_and_write_on_its_own_host(
    galley: LiveGalley, model: ScriptedModel, tmp_path: Path
) -> None:
    client, agent, environment, key = _setup(galley)
    workdir = tmp_path / "worker-host"
    workdir.mkdir()
    marker = "only-on-the-worker-" + secrets.token_hex(4)
    (workdir / "host-only.txt").write_text(marker + "\n")
    model.push(
        tool_call("bash", {"command": "cat host-only.txt; pwd"}),
        tool_call("write", {"file_path": "written.txt", "content": "from the model"}),
        tool_call("read", {"file_path": "host-only.txt"}),
        text("All done."),
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    with BackgroundWorker(
        galley, environment_id=environment.id, environment_key=key, workdir=str(workdir), max_idle=1.0
    ):
        _message(client, session.id, "Look around.")
        _wait(lambda: _idle_end_turn(client, session.id), what="the turn to end")
        # The worker leaves max_idle after the end_turn idle and stops its item.
        _wait(
            lambda: [w.state for w in _work_items(client, environment.id, key)] == ["stopped"],
            what="the work item to stop",
        )
    events = _events(client, session.id)
    uses = [e for e in events if e.type == "agent.tool_use"]
    assert [u.name for u in uses] == ["bash", "write", "read"]
    results = _results(events)
    assert set(results) == {u.id for u in uses}  # every call answered by the worker, once
    assert not [e for e in events if e.type == "agent.tool_result"]  # nothing ran in Galley
    bash_out = "".join(b.text for b in results[uses[0].id].content if b.type == "text")
    assert marker in bash_out and str(workdir) in bash_out
    read_out = "".join(b.text for b in results[uses[2].id].content if b.type == "text")
    assert marker in read_out
    assert (workdir / "written.txt").read_text() == "from the model"
    assert not list(galley.data_dir.rglob("written.txt"))  # no Galley sandbox saw the write
    # The model was given the worker's answers.
    last_request = model.requests[-1]
    tool_results = [
        b
        for m in last_request["messages"]
        for b in (m["content"] if isinstance(m["content"], list) else [])
        if b.get("type") == "tool_result"
    ]
    assert len(tool_results) == 3
    types = [e.type for e in events]
    assert (
        "session.status_idle"
        not in types[: types.index(next(e for e in events if e.type == "agent.message").type)]
    )


def test_a_message_after_the_worker_left_enqueues_new_work(
    galley: LiveGalley, model: ScriptedModel, tmp_path: Path
) -> None:
    client, agent, environment, key = _setup(galley)
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    model.push(text("First."))
    with BackgroundWorker(
        galley, environment_id=environment.id, environment_key=key, workdir=str(tmp_path), max_idle=0.5
    ):
        _message(client, session.id, "One.")
        _wait(lambda: [w.state for w in _work_items(client, environment.id, key)] == ["stopped"], what="stop")
    model.push(tool_call("bash", {"command": "echo second-turn"}), text("Second."))
    _message(client, session.id, "Two.")
    items = _work_items(client, environment.id, key)
    assert sorted(w.state for w in items) == ["queued", "stopped"]
    with BackgroundWorker(
        galley, environment_id=environment.id, environment_key=key, workdir=str(tmp_path), max_idle=0.5
    ):
        _wait(lambda: _idle_end_turn(client, session.id), what="the second turn")
    results = _results(_events(client, session.id))
    assert any("second-turn" in b.text for r in results.values() for b in r.content if b.type == "text")


def test_handle_item_serves_one_claimed_item_from_the_environment_variables(
    galley: LiveGalley, model: ScriptedModel, tmp_path: Path
) -> None:
    client, agent, environment, key = _setup(galley)
    (tmp_path / "note.txt").write_text("handled by handle_item\n")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    model.push(tool_call("read", {"file_path": "note.txt"}), text("Read it."))
    _message(client, session.id, "Read the note.")
    poller = anthropic.Anthropic(base_url=galley.base_url, auth_token=key, max_retries=0)
    poller.api_key = None
    item = _wait(lambda: poller.beta.environments.work.poll(environment.id, block_ms=500), what="an item")
    poller.beta.environments.work.ack(item.id, environment_id=environment.id)
    script = textwrap.dedent(
        """
        import asyncio, sys
        import anthropic
        client = anthropic.AsyncAnthropic(base_url=sys.argv[1], api_key="sk-unused", max_retries=0)
        asyncio.run(client.beta.environments.work.worker(workdir=sys.argv[2], max_idle=0.5).handle_item())
        """
    )
    env = {
        **os.environ,
        "ANTHROPIC_WORK_ID": item.id,
        "ANTHROPIC_ENVIRONMENT_ID": environment.id,
        "ANTHROPIC_SESSION_ID": session.id,
        "ANTHROPIC_ENVIRONMENT_KEY": key,
        "ANTHROPIC_WORK_SECRET": item.secret or "",
    }
    done = subprocess.run(
        [sys.executable, "-c", script, galley.base_url, str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _idle_end_turn(client, session.id)
    [result] = _results(_events(client, session.id)).values()
    assert "handled by handle_item" in "".join(b.text for b in result.content if b.type == "text")
    assert [w.state for w in _work_items(client, environment.id, key)] == ["stopped"]


def _killable_worker(
    galley: LiveGalley, environment_id: str, key: str, workdir: Path, log: Path
) -> subprocess.Popen[bytes]:
    script = textwrap.dedent(
        """
        import asyncio, logging, sys
        import anthropic
        logging.basicConfig(level=logging.INFO)
        client = anthropic.AsyncAnthropic(base_url=sys.argv[1], api_key="sk-unused", max_retries=0)
        worker = client.beta.environments.work.worker(
            environment_id=sys.argv[2], environment_key=sys.argv[3], workdir=sys.argv[4], max_idle=1.0
        )
        asyncio.run(worker.run())
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, galley.base_url, environment_id, key, str(workdir)],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_a_sigkilled_workers_item_is_reclaimed_and_the_session_finishes_on_another(
    galley: LiveGalley, model: ScriptedModel, tmp_path: Path
) -> None:
    client, agent, environment, key = _setup(galley)
    workdir = tmp_path / "shared"
    workdir.mkdir()
    gate = workdir / "gate"
    # The first bash call blocks until the gate file exists; the first worker is killed inside it.
    model.push(
        tool_call("bash", {"command": f"while [ ! -e {gate} ]; do sleep 0.1; done; echo passed-the-gate"}),
        tool_call("bash", {"command": "echo after"}),
        text("Finished."),
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    first = _killable_worker(galley, environment.id, key, workdir, tmp_path / "first.log")
    try:
        _message(client, session.id, "Go.")
        _wait(
            lambda: [e for e in _events(client, session.id) if e.type == "agent.tool_use"], what="a tool call"
        )
        _wait(
            lambda: [w.state for w in _work_items(client, environment.id, key)] == ["active"], what="active"
        )
        time.sleep(0.5)
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        first.wait(timeout=30)
    assert client.beta.sessions.retrieve(session.id).status == "running"
    gate.write_text("open")
    with BackgroundWorker(
        galley, environment_id=environment.id, environment_key=key, workdir=str(workdir), max_idle=1.0
    ):
        _wait(lambda: _idle_end_turn(client, session.id), timeout=120, what="the session to finish")
        # The worker stops its item once the session has been idle for max_idle; it is cancelled
        # when this block ends, so the stop is waited for here.
        _wait(
            lambda: [w.state for w in _work_items(client, environment.id, key)] == ["stopped"],
            what="the same item, reclaimed after its lease, then stopped",
        )
    events = _events(client, session.id)
    uses = [e for e in events if e.type == "agent.tool_use"]
    results = [e for e in events if e.type == "user.tool_result"]
    assert len(uses) == 2 and sorted(r.tool_use_id for r in results) == sorted(u.id for u in uses)
    assert "passed-the-gate" in "".join(b.text for b in results[0].content if b.type == "text")


def test_two_workers_polling_one_queue_each_get_different_items(
    galley: LiveGalley, model: ScriptedModel
) -> None:
    client, agent, environment, key = _setup(galley)
    sessions = [client.beta.sessions.create(agent=agent.id, environment_id=environment.id) for _ in range(6)]
    seen: list[str] = []
    lock = threading.Lock()

    def poll(worker_id: str) -> None:
        poller = anthropic.Anthropic(base_url=galley.base_url, auth_token=key, max_retries=0)
        poller.api_key = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            item = poller.beta.environments.work.poll(
                environment.id, block_ms=200, anthropic_worker_id=worker_id
            )
            if item is None:
                with lock:
                    if len(seen) >= len(sessions):
                        return
                continue
            poller.beta.environments.work.ack(item.id, environment_id=environment.id)
            with lock:
                seen.append(item.id)

    threads = [threading.Thread(target=poll, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(seen) == len(sessions) == len(set(seen))
    stats = client.beta.environments.work.stats(environment.id)
    assert stats.workers_polling == 2 and stats.depth == 0


def _galley_worker(
    galley: LiveGalley, environment_id: str, key: str, host: Path, log: Path, *args: str
) -> subprocess.Popen[bytes]:
    """`manage.py environment_worker` as a deployment runs it: no database, only the URL and key."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "ANTHROPIC_"))
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "galley.settings",
            "GALLEY_DATA_DIR": str(host),
            "ANTHROPIC_ENVIRONMENT_KEY": key,
            "ANTHROPIC_BASE_URL": galley.base_url,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return subprocess.Popen(
        [sys.executable, "manage.py", "environment_worker", "--environment", environment_id]
        + ["--max-idle", "1", *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _healthcheck(galley: LiveGalley, environment_id: str, *, enqueue: bool = False) -> dict[str, Any]:
    """Queue a healthcheck (as the console's button does) or read the latest one's result."""
    code = (
        "import json; from agents.models import Environment; from selfhosted import services; "
        f"env = Environment.objects.get(pk={environment_id!r}); "
        + ("services.work_healthcheck_enqueue(environment=env); " if enqueue else "")
        + "r = services.healthcheck_latest(environment=env); "
        "print(json.dumps({'status': r.status, 'worker_id': r.item.worker_id, 'took_ms': r.took_ms, "
        "'acked': r.item.acknowledged_at is not None}))"
    )
    return dict(json.loads(galley.manage("shell", "-c", code).stdout.strip().splitlines()[-1]))


def test_manage_py_environment_worker_answers_a_healthcheck_without_a_sandbox(
    galley: LiveGalley, tmp_path: Path
) -> None:
    _client, _agent, environment, key = _setup(galley)
    host_dir = tempfile.TemporaryDirectory(prefix="galley-worker-host-")
    host = Path(host_dir.name)
    log = tmp_path / "worker.log"
    assert _healthcheck(galley, environment.id, enqueue=True)["status"] == "waiting"
    proc = _galley_worker(galley, environment.id, key, host, log, "--worker-id", "galley-host-7")
    try:
        result = _wait(
            lambda: (r := _healthcheck(galley, environment.id))["status"] == "answered" and r,
            timeout=90,
            what="the healthcheck",
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert result["worker_id"] == "galley-host-7", log.read_text()
    assert result["acked"] and result["took_ms"] >= 0
    assert not (host / "sandboxes").exists() or not any((host / "sandboxes").iterdir())  # nothing was run
    host_dir.cleanup()


def test_manage_py_environment_worker_runs_each_tool_in_bubblewrap_on_its_host(
    galley: LiveGalley, model: ScriptedModel, tmp_path: Path
) -> None:
    client, agent, environment, key = _setup(galley)
    # Sandboxes run as their own uid and must traverse to their workspace (pytest's tmp_path does not).
    host_dir = tempfile.TemporaryDirectory(prefix="galley-worker-host-")
    host = Path(host_dir.name)
    host.chmod(0o711)
    secret_file = tmp_path / "host-secret.txt"
    secret_file.write_text("not for the sandbox")
    model.push(
        tool_call("bash", {"command": f"id -u; pwd; cat {secret_file} || echo hidden-from-sandbox"}),
        tool_call("write", {"file_path": "/workspace/made.txt", "content": "made in bwrap"}),
        tool_call("read", {"file_path": "/workspace/made.txt"}),
        text("Done."),
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    log = tmp_path / "worker.log"
    proc = _galley_worker(galley, environment.id, key, host, log)
    try:
        _message(client, session.id, "Work in the sandbox.")
        _wait(lambda: _idle_end_turn(client, session.id), timeout=120, what="the turn")
        _wait(lambda: [w.state for w in _work_items(client, environment.id, key)] == ["stopped"], what="stop")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    events = _events(client, session.id)
    uses = [e for e in events if e.type == "agent.tool_use"]
    results = _results(events)
    assert set(results) == {u.id for u in uses} and len(uses) == 3, log.read_text()[-3000:]
    bash_out = "".join(b.text for b in results[uses[0].id].content if b.type == "text")
    lines = bash_out.splitlines()
    assert lines[0] != "0" and lines[1] == "/workspace"  # the sandbox's own uid and workspace
    assert "hidden-from-sandbox" in bash_out and "not for the sandbox" not in bash_out
    read_out = "".join(b.text for b in results[uses[2].id].content if b.type == "text")
    assert "made in bwrap" in read_out
    sandbox = host / "sandboxes" / session.id
    assert not os.path.ismount(sandbox / "volume")  # the runner's close stopped the sandbox and unmounted it
    volume_mount(sandbox)
    made = sandbox / "volume" / "workspace" / "made.txt"
    assert made.read_text() == "made in bwrap"  # the workspace is kept on the worker's host
    assert not list(galley.data_dir.rglob("made.txt"))
    from sandboxes.quota import volumes_release_under

    volumes_release_under(host)  # the worker mounted each sandbox's volume image on this host
    shutil.rmtree(host, ignore_errors=True)
    host_dir.cleanup()


def test_the_poller_stops_on_a_wrong_key_instead_of_retrying(galley: LiveGalley) -> None:
    _client, _agent, environment, _key = _setup(galley)

    async def first_item() -> None:
        work = _async_client(galley).beta.environments.work
        async for _item in work.poller(environment_id=environment.id, environment_key="sk-galley-env-wrong"):
            return

    with pytest.raises(anthropic.AuthenticationError):
        asyncio.run(asyncio.wait_for(first_item(), 30))
