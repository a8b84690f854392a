"""Memory stores for self-hosted workers against a live Galley, through the official SDK with strict
response validation: the work item's sessions token on the /v1/memory_stores routes (scoped to its
session's attachments, read-only refused, the session as the versions' actor, 401 once the item
stopped), and `manage.py environment_worker` mounting a session's skills and memory stores in its
bubblewrap sandbox, syncing the agent's changes back and reporting a lost race to the model."""

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.live import LiveGalley, live_galley
from tests.model_server import ScriptedModel, scripted_model, text, tool_call
from tests.test_selfhosted_sdk import _galley_worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedModel]:
    with scripted_model() as server:
        yield server


@pytest.fixture(scope="module")
def galley(model: ScriptedModel) -> Iterator[LiveGalley]:
    env = {"ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": model.base_url}
    with live_galley(env) as server:
        yield server


def _bearer(galley: LiveGalley, token: str) -> anthropic.Anthropic:
    client = anthropic.Anthropic(
        base_url=galley.base_url, auth_token=token, max_retries=0, _strict_response_validation=True
    )
    client.api_key = None
    return client


def _sessions_token(secret: str) -> str:
    return str(json.loads(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)))["sessions_token"])


def _self_hosted_session(galley: LiveGalley, resources: list[dict[str, Any]]) -> tuple[Any, Any, str]:
    client = galley.client()
    suffix = secrets.token_hex(3)
    agent = client.beta.agents.create(name=f"mem-{suffix}", model="claude-sonnet-4-6")
    environment = client.beta.environments.create(name=f"mem-env-{suffix}", config={"type": "self_hosted"})
    key = galley.manage("create_environment_key", environment.id, "w").stdout.strip().splitlines()[-1]
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, resources=resources)
    return environment, session, key


def test_the_sessions_token_reaches_only_its_sessions_stores(galley: LiveGalley) -> None:
    client = galley.client()
    notes = client.beta.memory_stores.create(name=f"notes {secrets.token_hex(2)}")
    facts = client.beta.memory_stores.create(name=f"facts {secrets.token_hex(2)}")
    foreign = client.beta.memory_stores.create(name=f"foreign {secrets.token_hex(2)}")
    kept = client.beta.memory_stores.memories.create(notes.id, path="/kept.md", content="kept")
    fact = client.beta.memory_stores.memories.create(facts.id, path="/fact.md", content="water is wet")
    client.beta.memory_stores.memories.create(foreign.id, path="/secret.md", content="not yours")
    environment, session, key = _self_hosted_session(
        galley,
        [
            {"type": "memory_store", "memory_store_id": notes.id},
            {"type": "memory_store", "memory_store_id": facts.id, "access": "read_only"},
        ],
    )
    item = _bearer(galley, key).beta.environments.work.poll(environment.id, block_ms=900)
    assert item is not None and item.data.id == session.id
    token = _sessions_token(item.secret)
    worker = _bearer(galley, token)
    memories = worker.beta.memory_stores.memories

    # Reads of both attached stores.
    assert [m.path for m in memories.list(notes.id) if m.type == "memory"] == ["/kept.md"]
    assert memories.retrieve(fact.id, memory_store_id=facts.id).content == "water is wet"
    assert worker.beta.memory_stores.retrieve(facts.id).id == facts.id
    assert [v.memory_id for v in worker.beta.memory_stores.memory_versions.list(facts.id)] == [fact.id]

    # Writes to the read_write store are the session's versions.
    made = memories.create(notes.id, path="/new.md", content="written by the worker")
    changed = memories.update(
        kept.id,
        memory_store_id=notes.id,
        content="kept, changed",
        precondition={"type": "content_sha256", "content_sha256": kept.content_sha256},
    )
    assert changed.content_sha256 != kept.content_sha256
    mine = client.beta.memory_stores.memory_versions.list(notes.id, session_id=session.id, view="full")
    assert sorted(v.memory_id for v in mine) == sorted([made.id, kept.id])
    for version in mine:
        assert version.created_by.type == "session_actor" and version.created_by.session_id == session.id
    memories.delete(made.id, memory_store_id=notes.id)
    [deleted] = client.beta.memory_stores.memory_versions.list(notes.id, operation="deleted").data
    assert deleted.created_by.type == "session_actor"

    # The read_only store refuses every write, naming the store and its access.
    for write in (
        lambda: memories.create(facts.id, path="/more.md", content="no"),
        lambda: memories.update(fact.id, memory_store_id=facts.id, content="no"),
        lambda: memories.delete(fact.id, memory_store_id=facts.id),
    ):
        with pytest.raises(anthropic.PermissionDeniedError) as info:
            write()
        assert facts.id in info.value.message and "read_only" in info.value.message
    unchanged = client.beta.memory_stores.memories.retrieve(fact.id, memory_store_id=facts.id)
    assert unchanged.content == "water is wet"

    # A store the session does not have looks missing; store management needs an API key.
    with pytest.raises(anthropic.NotFoundError):
        list(memories.list(foreign.id))
    with pytest.raises(anthropic.NotFoundError):
        memories.create(foreign.id, path="/x.md", content="no")
    with pytest.raises(anthropic.NotFoundError):
        worker.beta.memory_stores.retrieve(foreign.id)
    for manage in (
        lambda: worker.beta.memory_stores.create(name="mine"),
        lambda: worker.beta.memory_stores.list(),
        lambda: worker.beta.memory_stores.update(notes.id, name="renamed"),
        lambda: worker.beta.memory_stores.archive(notes.id),
        lambda: worker.beta.memory_stores.delete(notes.id),
    ):
        with pytest.raises(anthropic.PermissionDeniedError) as info:
            manage()
        assert "sessions token" in info.value.message
    assert client.beta.memory_stores.retrieve(notes.id).name == notes.name

    # The environment key is not a memory credential; API keys work as before.
    with pytest.raises(anthropic.AuthenticationError):
        list(_bearer(galley, key).beta.memory_stores.memories.list(notes.id))
    assert len(list(client.beta.memory_stores.memories.list(foreign.id))) == 1

    # Once the item stopped, its token is expired (the server keeps no hash to check it against).
    _bearer(galley, token).beta.environments.work.stop(item.id, environment_id=environment.id, force=True)
    for after in (
        lambda: list(memories.list(notes.id)),
        lambda: memories.create(notes.id, path="/late.md", content="too late"),
    ):
        with pytest.raises(anthropic.AuthenticationError):
            after()
    assert [m.path for m in client.beta.memory_stores.memories.list(notes.id) if m.type == "memory"] == [
        "/kept.md"
    ]


def _wait(predicate: Callable[[], Any], timeout: float = 120, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _text_of(event: Any) -> str:
    return "".join(b.text for b in event.content if b.type == "text")


SKILL_MD = b"""---
name: house-style
description: How this team writes notes.
---
# House style
HOUSE-STYLE-MARKER: short sentences.
"""


def test_manage_py_environment_worker_mounts_skills_and_syncs_memory(
    galley: LiveGalley, model: ScriptedModel, tmp_path: Path
) -> None:
    client = galley.client()
    suffix = secrets.token_hex(3)
    notes = client.beta.memory_stores.create(name=f"notes-{suffix}")
    facts = client.beta.memory_stores.create(name=f"facts-{suffix}")
    prefs = client.beta.memory_stores.memories.create(notes.id, path="/prefs.md", content="likes tea")
    client.beta.memory_stores.memories.create(facts.id, path="/fact.md", content="water is wet")
    for n in range(12):  # enough for the first fill to read whole pages
        client.beta.memory_stores.memories.create(notes.id, path=f"/bulk/{n:02}.md", content=f"bulk {n}")
    skill = client.beta.skills.create(files=[("house-style/SKILL.md", SKILL_MD)])
    agent = client.beta.agents.create(
        name=f"mem-worker-{suffix}",
        model="claude-sonnet-4-6",
        tools=[
            {
                "type": "agent_toolset_20260401",
                "default_config": {"enabled": False},
                "configs": [{"name": n, "enabled": True} for n in ("bash", "read", "write")],
            }
        ],
        # A built-in skill too: its helper scripts' libraries are built and mounted on the worker's host.
        skills=[{"type": "custom", "skill_id": skill.id}, {"type": "anthropic", "skill_id": "xlsx"}],
    )
    environment = client.beta.environments.create(name=f"mem-env-{suffix}", config={"type": "self_hosted"})
    key = galley.manage("create_environment_key", environment.id, "w").stdout.strip().splitlines()[-1]
    notes_dir, facts_dir = f"/mnt/memory/notes-{suffix}", f"/mnt/memory/facts-{suffix}"
    model.push(
        tool_call("read", {"file_path": f"{notes_dir}/prefs.md"}),
        tool_call(
            "bash",
            {
                "command": f"cat /workspace/skills/house-style/SKILL.md; cat {facts_dir}/fact.md; "
                f"printf 'tea, then coffee' > {notes_dir}/new.md; "
                f"(printf no > {facts_dir}/x.md) 2>/dev/null || echo read-only-refused; "
                f"echo bulk=$(ls {notes_dir}/bulk | wc -l) $(cat {notes_dir}/bulk/11.md); "
                "ls /workspace/skills/xlsx/SKILL.md; "
                "python3 -c 'import openpyxl; print(\"openpyxl\", openpyxl.__version__)'"
            },
        ),
        # Another writer changes prefs.md while this call runs (the test does, once it sees "mine").
        tool_call(
            "bash",
            {
                "command": f"printf mine > {notes_dir}/prefs.md; "
                "while [ ! -e /workspace/go ]; do sleep 0.1; done; echo waited"
            },
        ),
        # A background process that writes only after the turn ended: the worker's last sync saves it.
        tool_call(
            "bash",
            {
                "command": "(while [ ! -e /workspace/go2 ]; do sleep 0.1; done; "
                f"printf late > {notes_dir}/late.md) >/dev/null 2>&1 & echo started"
            },
        ),
        text("Done."),
    )
    session = client.beta.sessions.create(
        agent=agent.id,
        environment_id=environment.id,
        resources=[
            {"type": "memory_store", "memory_store_id": notes.id},
            {"type": "memory_store", "memory_store_id": facts.id, "access": "read_only"},
        ],
    )
    host_dir = tempfile.TemporaryDirectory(prefix="galley-worker-host-")
    host = Path(host_dir.name)
    host.chmod(0o711)  # sandboxes run as their own uid and must traverse to their workspace
    log = tmp_path / "worker.log"
    # A later --max-idle wins: time for the background write before the worker lets go.
    proc = _galley_worker(galley, environment.id, key, host, log, "--max-idle", "5")
    sandbox = host / "sandboxes" / session.id
    try:
        client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "Go."}]}]
        )
        mine = sandbox / "memory" / f"notes-{suffix}" / "prefs.md"
        _wait(lambda: mine.is_file() and mine.read_text() == "mine", what="the agent's edit")
        client.beta.memory_stores.memories.update(prefs.id, memory_store_id=notes.id, content="likes juice")
        (sandbox / "volume" / "workspace" / "go").write_text("")
        _wait(
            lambda: client.beta.sessions.retrieve(session.id).status == "idle"
            and any(e.type == "session.status_idle" for e in client.beta.sessions.events.list(session.id)),
            what="the turn",
        )
        (sandbox / "volume" / "workspace" / "go2").write_text("")
        _wait(
            lambda: any(m.path == "/late.md" for m in client.beta.memory_stores.memories.list(notes.id)),
            what="the last sync",
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    events = list(client.beta.sessions.events.list(session.id, limit=1000))
    uses = [e for e in events if e.type == "agent.tool_use"]
    results = {e.tool_use_id: e for e in events if e.type == "user.tool_result"}
    assert len(uses) == 4 and set(results) == {u.id for u in uses}, log.read_text()[-3000:]
    read_out, skill_out, race_out, _background = (_text_of(results[u.id]) for u in uses)

    # The agent read a memory and the skill, and could not write the read-only store.
    assert "likes tea" in read_out
    assert "HOUSE-STYLE-MARKER" in skill_out and "water is wet" in skill_out
    assert "read-only-refused" in skill_out and "bulk=12 bulk 11" in skill_out
    assert "/workspace/skills/xlsx/SKILL.md" in skill_out and "openpyxl 3.1.5" in skill_out, skill_out
    assert [m.path for m in client.beta.memory_stores.memories.list(facts.id) if m.type == "memory"] == [
        "/fact.md"
    ]
    # Its new memory is a version attributed to the session.
    written = {m.path: m for m in client.beta.memory_stores.memories.list(notes.id) if m.type == "memory"}
    assert set(written) == {"/prefs.md", "/new.md", "/late.md", *(f"/bulk/{n:02}.md" for n in range(12))}
    new = client.beta.memory_stores.memories.retrieve(written["/new.md"].id, memory_store_id=notes.id)
    assert new.content == "tea, then coffee"
    for memory_id in (new.id, written["/late.md"].id):
        [version] = client.beta.memory_stores.memory_versions.list(notes.id, memory_id=memory_id)
        assert version.created_by.type == "session_actor" and version.created_by.session_id == session.id
    # The lost race: the other writer's content stays, the model is told with both versions.
    assert "waited" in race_out and f"Memory conflict on {notes_dir}/prefs.md" in race_out
    assert "mine" in race_out and "likes juice" in race_out
    current = client.beta.memory_stores.memories.retrieve(prefs.id, memory_store_id=notes.id)
    assert current.content == "likes juice"
    assert mine.read_text() == "likes juice"
    from sandboxes.quota import volumes_release_under

    volumes_release_under(host)
    shutil.rmtree(host, ignore_errors=True)
    host_dir.cleanup()


def test_the_sdks_own_worker_syncs_memory_with_the_sessions_token(
    galley: LiveGalley, model: ScriptedModel, tmp_path: Path
) -> None:
    from tests.test_selfhosted_sdk import BackgroundWorker

    client = galley.client()
    suffix = secrets.token_hex(3)
    store = client.beta.memory_stores.create(name=f"sdk-worker-{suffix}")
    client.beta.memory_stores.memories.create(store.id, path="/prefs.md", content="likes tea")
    agent = client.beta.agents.create(
        name=f"sdk-mem-{suffix}",
        model="claude-sonnet-4-6",
        tools=[
            {
                "type": "agent_toolset_20260401",
                "default_config": {"enabled": False},
                "configs": [{"name": n, "enabled": True} for n in ("read", "write")],
            }
        ],
    )
    environment = client.beta.environments.create(name=f"sdk-env-{suffix}", config={"type": "self_hosted"})
    key = galley.manage("create_environment_key", environment.id, "w").stdout.strip().splitlines()[-1]
    session = client.beta.sessions.create(
        agent=agent.id,
        environment_id=environment.id,
        resources=[{"type": "memory_store", "memory_store_id": store.id}],
    )
    [resource] = session.resources
    mount = Path(resource.mount_path)  # the SDK's worker puts the store there, on its own host
    assert not mount.exists()
    parent_existed = mount.parent.exists()
    model.push(
        tool_call("read", {"file_path": f"{mount}/prefs.md"}),
        tool_call("write", {"file_path": f"{mount}/new.md", "content": "from the sdk worker"}),
        text("Saved."),
    )
    workdir = tmp_path / "sdk-worker"
    workdir.mkdir()
    try:
        with BackgroundWorker(
            galley,
            environment_id=environment.id,
            environment_key=key,
            workdir=str(workdir),
            max_idle=1.0,
            memory_sync_interval=5.0,
        ):
            client.beta.sessions.events.send(
                session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "Go."}]}]
            )
            _wait(
                lambda: [
                    m.path for m in client.beta.memory_stores.memories.list(store.id) if m.type == "memory"
                ]
                == ["/new.md", "/prefs.md"],
                what="the worker's final sync",
            )
    finally:
        shutil.rmtree(mount, ignore_errors=True)
        if not parent_existed:
            with contextlib.suppress(OSError):
                mount.parent.rmdir()  # only if empty: another worker on this host may use it
    events = list(client.beta.sessions.events.list(session.id, limit=1000))
    results = [e for e in events if e.type == "user.tool_result"]
    assert "likes tea" in _text_of(results[0])
    new = next(m for m in client.beta.memory_stores.memories.list(store.id) if m.path == "/new.md")
    assert client.beta.memory_stores.memories.retrieve(new.id, memory_store_id=store.id).content == (
        "from the sdk worker"
    )
    [version] = client.beta.memory_stores.memory_versions.list(store.id, memory_id=new.id)
    assert version.created_by.type == "session_actor" and version.created_by.session_id == session.id
