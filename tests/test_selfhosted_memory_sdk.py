"""Memory stores for self-hosted workers against a live Galley, through the official SDK with strict
response validation: the work item's sessions token on the /v1/memory_stores routes (scoped to its
session's attachments, read-only refused, the session as the versions' actor, 401 once the item
stopped)."""

import base64
import json
import secrets
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.live import LiveGalley, live_galley
from tests.model_server import ScriptedModel, scripted_model

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
