"""Memory stores, memories and memory versions through the official SDK with strict response
validation against a live server (spec 13): every route, the preconditions, path rules, limits,
listing by prefix and depth, versions with actors and redaction, archived stores."""

import hashlib

import anthropic
import pytest


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def client(live):
    return live.client()


def test_store_lifecycle(client):
    store = client.beta.memory_stores.create(name="Team Notes", metadata={"team": "core"})
    assert store.id.startswith("memstore_") and store.type == "memory_store"
    assert store.description == "" and store.archived_at is None and store.metadata == {"team": "core"}

    updated = client.beta.memory_stores.update(
        store.id, description="Notes the team keeps", metadata={"team": None, "owner": "ana"}
    )
    assert updated.description == "Notes the team keeps" and updated.metadata == {"owner": "ana"}
    assert client.beta.memory_stores.retrieve(store.id).name == "Team Notes"
    assert store.id in [s.id for s in client.beta.memory_stores.list()]
    assert [s.id for s in client.beta.memory_stores.list(created_at_lte="2000-01-01T00:00:00Z")] == []

    archived = client.beta.memory_stores.archive(store.id)
    assert archived.archived_at is not None
    assert client.beta.memory_stores.archive(store.id).archived_at == archived.archived_at
    assert store.id not in [s.id for s in client.beta.memory_stores.list()]
    assert store.id in [s.id for s in client.beta.memory_stores.list(include_archived=True)]
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.memory_stores.update(store.id, name="renamed")
    assert "archived" in info.value.message

    deleted = client.beta.memory_stores.delete(store.id)
    assert deleted.type == "memory_store_deleted" and deleted.id == store.id
    with pytest.raises(anthropic.NotFoundError):
        client.beta.memory_stores.retrieve(store.id)


def test_memory_crud_with_preconditions_and_versions(client):
    store = client.beta.memory_stores.create(name="prefs")
    memories = client.beta.memory_stores.memories
    created = memories.create(store.id, path="/user/prefs.md", content="likes tea")
    assert created.id.startswith("mem_") and created.content is None  # basic view by default
    assert created.content_sha256 == sha("likes tea") and created.content_size_bytes == 9
    full = memories.create(store.id, path="/user/name.md", content="Ana", view="full")
    assert full.content == "Ana"
    assert memories.retrieve(created.id, memory_store_id=store.id).content == "likes tea"
    assert memories.retrieve(created.id, memory_store_id=store.id, view="basic").content is None

    with pytest.raises(anthropic.ConflictError) as info:
        memories.create(store.id, path="/user/prefs.md", content="again")
    assert info.value.type == "memory_path_conflict_error"

    with pytest.raises(anthropic.ConflictError) as info:
        memories.update(
            created.id,
            memory_store_id=store.id,
            content="likes coffee",
            precondition={"type": "content_sha256", "content_sha256": sha("something else")},
        )
    assert info.value.type == "memory_precondition_failed_error"
    assert memories.retrieve(created.id, memory_store_id=store.id).content == "likes tea"

    changed = memories.update(
        created.id,
        memory_store_id=store.id,
        content="likes coffee",
        precondition={"type": "content_sha256", "content_sha256": sha("likes tea")},
        view="full",
    )
    assert changed.content == "likes coffee" and changed.memory_version_id != created.memory_version_id
    renamed = memories.update(created.id, memory_store_id=store.id, path="/user/drinks.md")
    assert renamed.path == "/user/drinks.md" and renamed.id == created.id
    with pytest.raises(anthropic.ConflictError) as info:
        memories.update(created.id, memory_store_id=store.id, path="/user/name.md")
    assert info.value.type == "memory_path_conflict_error"

    with pytest.raises(anthropic.ConflictError) as info:
        memories.delete(full.id, memory_store_id=store.id, expected_content_sha256=sha("Bob"))
    assert info.value.type == "memory_precondition_failed_error"
    gone = memories.delete(full.id, memory_store_id=store.id, expected_content_sha256=sha("Ana"))
    assert gone.type == "memory_deleted" and gone.id == full.id
    with pytest.raises(anthropic.NotFoundError):
        memories.retrieve(full.id, memory_store_id=store.id)

    versions = client.beta.memory_stores.memory_versions
    history = list(versions.list(store.id, memory_id=created.id))
    assert [v.operation for v in history] == ["modified", "modified", "created"]  # newest first
    assert all(v.created_by and v.created_by.type == "api_actor" for v in history)
    assert history[0].content is None and history[0].content_sha256 == sha("likes coffee")
    full_history = list(versions.list(store.id, memory_id=created.id, view="full"))
    assert full_history[-1].content == "likes tea"
    deleted_history = list(versions.list(store.id, memory_id=full.id))
    assert [v.operation for v in deleted_history] == ["deleted", "created"]
    assert deleted_history[0].content is None and deleted_history[0].content_sha256 is None
    assert [v.id for v in versions.list(store.id, operation="deleted")] == [deleted_history[0].id]
    api_key_id = history[0].created_by.api_key_id
    assert len(list(versions.list(store.id, api_key_id=api_key_id))) == 5
    assert list(versions.list(store.id, session_id="sesn_none")) == []
    assert list(versions.list(store.id, service_account_id="svac_none")) == []

    first = history[-1]
    assert versions.retrieve(first.id, memory_store_id=store.id).content == "likes tea"
    redacted = versions.redact(first.id, memory_store_id=store.id)
    assert redacted.redacted_at is not None and redacted.redacted_by.type == "api_actor"
    assert redacted.content is None and redacted.path is None and redacted.content_sha256 is None
    again = versions.retrieve(first.id, memory_store_id=store.id)
    assert again.redacted_at is not None and again.content is None and again.created_by is not None
    with pytest.raises(anthropic.BadRequestError) as info:
        versions.redact(renamed.memory_version_id, memory_store_id=store.id)
    assert "current content" in info.value.message


@pytest.mark.parametrize(
    ("path", "word"),
    [
        ("notes.md", "start with '/'"),
        ("/a/../b", "'..'"),
        ("/a/./b", "'.'"),
        ("/a\x00b", "NUL"),
        ("/a//b", "empty"),
        ("/a/", "empty"),
        ("/" + "/".join(["s"] * 21), "20 segments"),
        ("/" + "x" * 1024, "1024 bytes"),
        ("/cafe\u0301", "Normalization"),
        ("/line\u2028sep", "control"),
    ],
)
def test_bad_paths_are_refused_and_nothing_is_written(client, path, word):
    store = client.beta.memory_stores.create(name="paths")
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.memory_stores.memories.create(store.id, path=path, content="x")
    assert word in info.value.message and "path" in info.value.message
    assert list(client.beta.memory_stores.memories.list(store.id)) == []
    assert list(client.beta.memory_stores.memory_versions.list(store.id)) == []


def test_content_limit(client):
    store = client.beta.memory_stores.create(name="limits")
    memories = client.beta.memory_stores.memories
    exact = memories.create(store.id, path="/big.md", content="é" * 51_200)  # 102,400 bytes
    assert exact.content_size_bytes == 102_400
    with pytest.raises(anthropic.BadRequestError) as info:
        memories.create(store.id, path="/bigger.md", content="x" * 102_401)
    assert "content" in info.value.message and "102400" in info.value.message
    with pytest.raises(anthropic.BadRequestError):
        memories.update(exact.id, memory_store_id=store.id, content="x" * 102_401)
    assert [m.path for m in memories.list(store.id)] == ["/big.md"]


def test_listing_by_prefix_and_depth(client):
    store = client.beta.memory_stores.create(name="tree")
    memories = client.beta.memory_stores.memories
    for path in (
        "/a.md",
        "/notes/todo.md",
        "/notes/deep/x.md",
        "/notes/deep/y.md",
        "/notes-archive/old.md",
        "/z/1.md",
    ):
        memories.create(store.id, path=path, content=path)

    everything = list(memories.list(store.id))
    assert [m.path for m in everything] == sorted(
        [
            "/a.md",
            "/notes/todo.md",
            "/notes/deep/x.md",
            "/notes/deep/y.md",
            "/notes-archive/old.md",
            "/z/1.md",
        ]
    )
    top = list(memories.list(store.id, depth=1))
    assert [(m.type, m.path) for m in top] == [
        ("memory", "/a.md"),
        ("memory_prefix", "/notes-archive/"),
        ("memory_prefix", "/notes/"),
        ("memory_prefix", "/z/"),
    ]
    notes = list(memories.list(store.id, path_prefix="/notes/", depth=1))
    assert [(m.type, m.path) for m in notes] == [
        ("memory_prefix", "/notes/deep/"),
        ("memory", "/notes/todo.md"),
    ]
    under = list(memories.list(store.id, path_prefix="/notes/"))
    assert [m.path for m in under] == ["/notes/deep/x.md", "/notes/deep/y.md", "/notes/todo.md"]

    # Pages of one item: prefixes count toward the limit and a rolled-up directory is never split.
    page = memories.list(store.id, depth=1, limit=1)
    seen = [item.path for item in page.data]
    while page.next_page:
        page = memories.list(store.id, depth=1, limit=1, page=page.next_page)
        seen += [item.path for item in page.data]
    assert seen == [m.path for m in top]
    paged = [m.path for m in memories.list(store.id, limit=2, view="full")]
    assert paged == [m.path for m in everything]
    assert all(m.content == m.path for m in memories.list(store.id, view="full"))

    with pytest.raises(anthropic.BadRequestError) as info:
        list(memories.list(store.id, path_prefix="/notes"))
    assert "path_prefix" in info.value.message
    with pytest.raises(anthropic.BadRequestError) as info:
        list(memories.list(store.id, view="everything"))  # type: ignore[arg-type]
    assert "view" in info.value.message


def test_archived_store_is_read_and_delete_only(client):
    store = client.beta.memory_stores.create(name="frozen")
    memories = client.beta.memory_stores.memories
    memory = memories.create(store.id, path="/keep.md", content="kept")
    client.beta.memory_stores.archive(store.id)
    with pytest.raises(anthropic.BadRequestError) as info:
        memories.create(store.id, path="/new.md", content="x")
    assert "archived" in info.value.message
    with pytest.raises(anthropic.BadRequestError):
        memories.update(memory.id, memory_store_id=store.id, content="changed")
    assert memories.retrieve(memory.id, memory_store_id=store.id).content == "kept"
    assert memories.delete(memory.id, memory_store_id=store.id).type == "memory_deleted"
    versions = list(client.beta.memory_stores.memory_versions.list(store.id))
    assert [v.operation for v in versions] == ["deleted", "created"]
    assert client.beta.memory_stores.memory_versions.redact(
        versions[1].id, memory_store_id=store.id
    ).redacted_at


def test_unknown_ids_are_404(client):
    store = client.beta.memory_stores.create(name="ids")
    with pytest.raises(anthropic.NotFoundError):
        client.beta.memory_stores.retrieve("memstore_nope")
    with pytest.raises(anthropic.NotFoundError):
        client.beta.memory_stores.memories.retrieve("mem_nope", memory_store_id=store.id)
    with pytest.raises(anthropic.NotFoundError):
        client.beta.memory_stores.memory_versions.retrieve("memver_nope", memory_store_id=store.id)
    with pytest.raises(anthropic.NotFoundError):
        client.beta.memory_stores.memory_versions.redact("memver_nope", memory_store_id=store.id)
