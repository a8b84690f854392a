"""Memory stores in sessions through the official SDK (strict validation) against a live Galley
whose worker talks to a scripted model and runs tools in bubblewrap: a session reads a memory and
writes a new one, and the new memory's version is attributed to the session."""

import json
import secrets

import anthropic
import pytest

from tests.live import LiveGalley
from tests.live_fixtures import until_idle
from tests.model_server import ScriptedModel, text, tool_call

pytestmark = pytest.mark.slow

TOOLSET = {"type": "agent_toolset_20260401"}


def test_a_session_reads_a_memory_and_writes_a_new_one(galley: LiveGalley, model: ScriptedModel) -> None:
    client = galley.client()
    suffix = secrets.token_hex(3)
    store = client.beta.memory_stores.create(name=f"Team Notes {suffix}", description="Facts about the team.")
    client.beta.memory_stores.memories.create(store.id, path="/lead.md", content="The lead is Ana.")
    agent = client.beta.agents.create(name=f"mem-{suffix}", model="claude-sonnet-4-6", tools=[TOOLSET])
    environment = client.beta.environments.create(name=f"mem-env-{suffix}")
    session = client.beta.sessions.create(
        agent=agent.id,
        environment_id=environment.id,
        resources=[{"type": "memory_store", "memory_store_id": store.id, "instructions": "Check it first."}],
    )
    [resource] = session.resources
    slug = f"team-notes-{suffix}"
    assert resource.type == "memory_store" and resource.memory_store_id == store.id
    assert resource.mount_path == f"/mnt/memory/{slug}" and resource.access == "read_write"
    assert resource.name == store.name and resource.description == "Facts about the team."
    assert [s.id for s in client.beta.sessions.list(memory_store_id=store.id)] == [session.id]

    mount = f"/mnt/memory/{slug}"
    model.push(
        tool_call("bash", {"command": f"cat {mount}/lead.md"}),
        tool_call("write", {"file_path": f"{mount}/people/bo.md", "content": "Bo joined in May."}),
        text("Saved."),
    )
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(
            session.id,
            events=[{"type": "user.message", "content": [{"type": "text", "text": "Remember Bo."}]}],
        )
        seen = until_idle(stream, limit=100)
    results = [e for e in seen if e.type == "agent.tool_result"]
    assert "The lead is Ana." in results[0].content[0].text
    assert not results[1].is_error
    assert seen[-1].stop_reason.type == "end_turn"
    system = json.dumps(model.requests[-1]["system"])
    assert f"{mount}/" in system and "Facts about the team." in system and "Check it first." in system

    listed = {m.path: m for m in client.beta.memory_stores.memories.list(store.id, view="full")}
    assert listed["/people/bo.md"].content == "Bo joined in May."
    [version] = client.beta.memory_stores.memory_versions.list(store.id, session_id=session.id)
    assert version.operation == "created" and version.memory_id == listed["/people/bo.md"].id
    assert version.created_by.type == "session_actor" and version.created_by.session_id == session.id


def test_bad_memory_resources_are_refused_and_nothing_is_written(galley: LiveGalley) -> None:
    client = galley.client()
    suffix = secrets.token_hex(3)
    agent = client.beta.agents.create(name=f"memx-{suffix}", model="claude-sonnet-4-6")
    environment = client.beta.environments.create(name=f"memx-env-{suffix}")
    stores = [client.beta.memory_stores.create(name=f"s{i}-{suffix}") for i in range(9)]
    before = len(list(client.beta.sessions.list()))

    def create(resources):  # type: ignore[no-untyped-def]
        return client.beta.sessions.create(agent=agent.id, environment_id=environment.id, resources=resources)

    with pytest.raises(anthropic.BadRequestError) as info:
        create([{"type": "memory_store", "memory_store_id": s.id} for s in stores])
    assert "at most 8" in info.value.message
    archived = client.beta.memory_stores.create(name=f"old-{suffix}")
    client.beta.memory_stores.archive(archived.id)
    with pytest.raises(anthropic.BadRequestError) as info:
        create([{"type": "memory_store", "memory_store_id": archived.id}])
    assert "resources[0].memory_store_id" in info.value.message and "archived" in info.value.message
    with pytest.raises(anthropic.NotFoundError):
        create([{"type": "memory_store", "memory_store_id": "memstore_missing"}])
    with pytest.raises(anthropic.BadRequestError) as info:
        create([{"type": "memory_store", "memory_store_id": stores[0].id, "access": "write_only"}])
    assert "resources[0].access" in info.value.message
    assert len(list(client.beta.sessions.list())) == before
    # Attached only at create: adding one later is refused.
    session = create([])
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.sessions.resources.add(
            session.id,
            type="memory_store",  # type: ignore[arg-type]
            file_id="unused",
            extra_body={"memory_store_id": stores[0].id},
        )
    assert "memory_store" in info.value.message
