"""The SDK's worker, unmodified, survives the web server going away in the middle of its long poll:
killed outright, or shut down with SIGTERM, and started again on the same port. The poll answers
a 5xx or drops the connection while the server goes (a 4xx would end the SDK's poller for good),
the worker reconnects with its backoff, and the next session's tools still run on it."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import anthropic
import pytest

from tests.live import ROOT, LiveGalley, _wait_until_up, live_galley
from tests.model_server import ScriptedModel, scripted_model, text, tool_call
from tests.test_selfhosted_sdk import BackgroundWorker, _events, _idle_end_turn, _message, _setup, _wait

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModel]:
    with scripted_model() as server:
        yield server


@pytest.fixture
def galley(model: ScriptedModel) -> Iterator[LiveGalley]:
    env = {"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": model.base_url, "GALLEY_SWEEP_SECONDS": "1"}
    with live_galley(env) as server:
        yield server


class PollWatch:
    """httpx event hooks on the worker's own client: they see each request go out and each answer
    come back, and change nothing. `in_poll` is set while a long poll waits for its answer."""

    def __init__(self) -> None:
        self.in_poll = threading.Event()
        self.statuses: list[int] = []

    async def on_request(self, request: Any) -> None:
        if request.url.path.endswith("/work/poll"):
            self.in_poll.set()

    async def on_response(self, response: Any) -> None:
        if response.request.url.path.endswith("/work/poll"):
            self.in_poll.clear()
            self.statuses.append(response.status_code)

    def client_options(self) -> dict[str, Any]:
        hooks = {"request": [self.on_request], "response": [self.on_response]}
        return {"http_client": anthropic.DefaultAsyncHttpxClient(event_hooks=hooks)}


def _serve(galley: LiveGalley, log: Path) -> subprocess.Popen[bytes]:
    port = str(urlparse(galley.base_url).port)
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", port],
        cwd=ROOT,
        env=galley.env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _wait_until_up(galley.base_url, proc)
    return proc


def _end(proc: subprocess.Popen[bytes], how: signal.Signals) -> None:
    os.killpg(proc.pid, how)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _one_bash_turn(
    client: anthropic.Anthropic, model: ScriptedModel, agent: Any, environment: Any, word: str
) -> None:
    model.push(tool_call("bash", {"command": f"echo {word}"}), text("Done."))
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    _message(client, session.id, "Say it.")
    _wait(lambda: _idle_end_turn(client, session.id), timeout=120, what=f"the turn after {word}")
    [result] = [e for e in _events(client, session.id) if e.type == "user.tool_result"]
    assert word in "".join(b.text for b in result.content if b.type == "text")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "terminated"])
def test_the_sdk_worker_survives_a_server_restart_in_the_middle_of_its_long_poll(
    galley: LiveGalley, model: ScriptedModel, tmp_path: Path, how: signal.Signals
) -> None:
    client, agent, environment, key = _setup(galley, tools=["bash"])
    watch = PollWatch()
    workdir = tmp_path / "host"
    workdir.mkdir()
    assert galley.proc is not None
    server = galley.proc
    restarted: list[subprocess.Popen[bytes]] = []
    try:
        with BackgroundWorker(
            galley,
            client_options=watch.client_options,
            environment_id=environment.id,
            environment_key=key,
            workdir=str(workdir),
            max_idle=0.5,
        ) as worker:
            _one_bash_turn(client, model, agent, environment, "before-the-restart")
            # Catch the worker inside a long poll that has waited a little already; end the server.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if watch.in_poll.wait(timeout=5):
                    time.sleep(0.2)
                    if watch.in_poll.is_set():
                        break
            assert watch.in_poll.is_set(), "the worker never long-polled"
            answered_before = len(watch.statuses)
            _end(server, how)
            time.sleep(1.0)  # the worker's polls meet a closed port meanwhile
            answered_at_restart = len(watch.statuses)  # the old server is gone: later answers are new
            restarted.append(_serve(galley, galley.data_dir / "serve-restarted.log"))
            _one_bash_turn(client, model, agent, environment, "after-the-restart")
            assert 200 in watch.statuses[answered_at_restart:]  # it polled the new server
            assert worker.thread.is_alive() and worker.error is None
            # Nothing the server answered while it went away was a 4xx (which ends the poller).
            assert all(s < 400 or s >= 500 for s in watch.statuses[answered_before:]), watch.statuses
    finally:
        for proc in restarted:
            _end(proc, signal.SIGTERM)
