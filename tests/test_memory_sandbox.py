"""Memory stores mounted in real bubblewrap sandboxes (memory.mounts): the agent's file tools read
and write /mnt/memory/<slug>/, its changes become memory versions attributed to the session, other
writers' changes come in before each call, and a write that loses a race is reported with both
contents."""

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from memory import services as memory
from memory.attachments import memory_resources_attach, memory_resources_plan, memory_system_prompt
from memory.models import Memory, MemoryVersion
from tests.sandbox_fixtures import run, text

pytestmark = pytest.mark.django_db(transaction=True)


def attach(session: Any, store: Any, **extra: Any) -> None:
    planned = memory_resources_plan(
        workspace=session.workspace,
        resources=[{"type": "memory_store", "memory_store_id": store.pk, **extra}],
    )
    memory_resources_attach(session=session, planned=planned)


@pytest.fixture
def store(db: Any) -> Any:
    from accounts.services import workspace_get_default

    made = memory.store_create(
        workspace=workspace_get_default(), body={"name": "User Prefs!", "description": "What the user likes."}
    )
    memory.memory_create(store=made, path="/prefs.md", content="likes tea\n", actor=None)
    return made


def test_a_session_reads_a_memory_and_writes_a_new_one(make_sandbox_session, store) -> None:
    session = make_sandbox_session()
    attach(session, store, instructions="Keep it short.")
    prompt = memory_system_prompt(session.pk, "Base prompt.")
    assert prompt.startswith("Base prompt.") and "/mnt/memory/user-prefs/" in prompt
    assert "What the user likes." in prompt and "Keep it short." in prompt

    assert text(run(session, "bash", command="cat /mnt/memory/user-prefs/prefs.md")).strip() == "likes tea"
    outcome = run(session, "write", file_path="/mnt/memory/user-prefs/notes/today.md", content="sunny\n")
    assert not outcome.is_error, text(outcome)
    new = Memory.objects.get(store=store, path="/notes/today.md")
    assert new.content == "sunny\n"
    [version] = MemoryVersion.objects.filter(memory_id=new.pk)
    assert version.operation == "created"
    assert version.created_by == {"type": "session_actor", "session_id": session.pk}
    assert list(memory.version_list(store=store, session_id=session.pk).items) == [version]

    run(session, "edit", file_path="/mnt/memory/user-prefs/prefs.md", old_string="tea", new_string="coffee")
    assert Memory.objects.get(store=store, path="/prefs.md").content == "likes coffee\n"
    run(session, "bash", command="rm /mnt/memory/user-prefs/notes/today.md")
    assert not Memory.objects.filter(store=store, path="/notes/today.md").exists()
    operations = list(
        MemoryVersion.objects.filter(actor_session_id=session.pk)
        .order_by("created_at")
        .values_list("operation", flat=True)
    )
    assert operations == ["created", "modified", "deleted"]


def test_other_writers_changes_reach_the_sandbox_before_the_next_call(make_sandbox_session, store) -> None:
    session = make_sandbox_session()
    attach(session, store)
    assert "likes tea" in text(run(session, "bash", command="cat /mnt/memory/user-prefs/prefs.md"))
    prefs = Memory.objects.get(store=store, path="/prefs.md")
    memory.memory_update(store=store, memory=prefs, body={"content": "likes juice\n"}, actor=None)
    memory.memory_create(store=store, path="/extra.md", content="new\n", actor=None)
    listing = text(
        run(session, "bash", command="cat /mnt/memory/user-prefs/prefs.md; ls /mnt/memory/user-prefs")
    )
    assert "likes juice" in listing and "extra.md" in listing


def test_a_read_only_store_cannot_be_written(make_sandbox_session, store) -> None:
    session = make_sandbox_session()
    attach(session, store, access="read_only")
    outcome = run(session, "bash", command="echo x > /mnt/memory/user-prefs/prefs.md")
    assert outcome.is_error or "Read-only" in text(outcome)
    assert Memory.objects.get(store=store, path="/prefs.md").content == "likes tea\n"


def test_what_cannot_be_a_memory_is_reported_and_not_saved(make_sandbox_session, store) -> None:
    session = make_sandbox_session()
    attach(session, store)
    outcome = run(
        session,
        "bash",
        command="head -c 102401 /dev/zero | tr '\\0' x > /mnt/memory/user-prefs/big.md",
    )
    assert "big.md was not saved" in text(outcome)
    assert not Memory.objects.filter(store=store, path="/big.md").exists()
    assert "/mnt/memory/user-prefs/big.md" not in text(
        run(session, "bash", command="ls /mnt/memory/user-prefs")
    )


def test_two_sessions_racing_on_a_path(make_sandbox_session, store, sandbox_root: Path) -> None:
    first = make_sandbox_session()
    second = make_sandbox_session()
    attach(first, store)
    attach(second, store)
    # The second session starts a slow write: it reads the file now and writes once released.
    box: dict[str, Any] = {}

    def slow_write() -> None:
        from django.db import connection

        try:
            box["outcome"] = run(
                second,
                "bash",
                command=(
                    "cat /mnt/memory/user-prefs/prefs.md >/dev/null; "
                    "for i in $(seq 600); do [ -e /tmp/go ] && break; sleep 0.05; done; "
                    "echo 'second version' > /mnt/memory/user-prefs/prefs.md"
                ),
            )
        finally:
            connection.close()

    worker = threading.Thread(target=slow_write)
    worker.start()
    from sandboxes.services import sandbox_root as root_of

    tmp = root_of(second.pk) / "volume" / "tmp"  # the sandbox volume holds its /tmp
    deadline = time.monotonic() + 60
    while not tmp.is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the second session's call has pulled and is waiting
    won = run(first, "write", file_path="/mnt/memory/user-prefs/prefs.md", content="first version\n")
    assert not won.is_error and "conflict" not in text(won).lower()
    (tmp / "go").touch()
    worker.join(timeout=120)
    lost = text(box["outcome"])
    assert "Memory conflict on /mnt/memory/user-prefs/prefs.md" in lost
    assert "second version" in lost and "first version" in lost
    current = Memory.objects.get(store=store, path="/prefs.md")
    assert current.content == "first version\n"
    [winner] = MemoryVersion.objects.filter(memory_id=current.pk, operation="modified")
    assert winner.created_by == {"type": "session_actor", "session_id": first.pk}
    # The loser's copy now holds the winner's content, so its next edit starts from it.
    assert text(run(second, "bash", command="cat /mnt/memory/user-prefs/prefs.md")).strip() == "first version"


def test_links_in_the_mount_are_ignored(make_sandbox_session, store) -> None:
    session = make_sandbox_session()
    attach(session, store)
    run(
        session,
        "bash",
        command=(
            "ln -s /etc/passwd /mnt/memory/user-prefs/leak.md; ln -s /etc /mnt/memory/user-prefs/etc; "
            "mkfifo /mnt/memory/user-prefs/pipe; echo ok > /mnt/memory/user-prefs/real.md"
        ),
    )
    paths = set(Memory.objects.filter(store=store).values_list("path", flat=True))
    assert paths == {"/prefs.md", "/real.md"}
    # Another writer's memory at a linked path is not written through the link.
    memory.memory_create(store=store, path="/etc/hostname", content="not written", actor=None)
    run(session, "bash", command="true")
    assert open("/etc/hostname").read() != "not written"


def test_the_process_backend_works_on_the_stores_host_directories(
    make_sandbox_session, store, settings
) -> None:  # type: ignore[no-untyped-def]
    from accounts.services import workspace_get_default
    from memory.mounts import store_dir
    from sandboxes.services import sandbox_root

    settings.GALLEY_SANDBOX_BACKEND = "process"  # no mount namespace: the prompt names host paths
    settings.GALLEY_SANDBOX_ALLOW_UNSAFE = True
    facts = memory.store_create(workspace=workspace_get_default(), body={"name": "Facts"})
    memory.memory_create(store=facts, path="/fact.md", content="water is wet", actor=None)
    session = make_sandbox_session()
    planned = memory_resources_plan(
        workspace=session.workspace,
        resources=[
            {"type": "memory_store", "memory_store_id": store.pk},
            {"type": "memory_store", "memory_store_id": facts.pk, "access": "read_only"},
        ],
    )
    memory_resources_attach(session=session, planned=planned)
    prefs_dir = store_dir(sandbox_root(session.pk), "/mnt/memory/user-prefs")
    facts_dir = store_dir(sandbox_root(session.pk), "/mnt/memory/facts")
    prompt = memory_system_prompt(session.pk, None)
    assert f"- {prefs_dir}/ (read and write)" in prompt and f"- {facts_dir}/ (read-only)" in prompt
    assert "/mnt/memory/" not in prompt

    assert text(run(session, "bash", command=f"cat {prefs_dir}/prefs.md")).strip() == "likes tea"
    assert "water is wet" in text(run(session, "read", file_path=f"{facts_dir}/fact.md"))
    run(session, "bash", command=f"printf sunny > {prefs_dir}/today.md")
    outcome = run(session, "write", file_path=f"{prefs_dir}/notes/more.md", content="more")
    assert not outcome.is_error, text(outcome)
    made = {m.path: m for m in Memory.objects.filter(store=store)}
    assert made["/today.md"].content == "sunny" and made["/notes/more.md"].content == "more"
    versions = MemoryVersion.objects.filter(memory_id__in=[made["/today.md"].pk, made["/notes/more.md"].pk])
    assert {v.created_by["session_id"] for v in versions} == {session.pk}

    refused = run(session, "write", file_path=f"{facts_dir}/fact.md", content="dry")
    assert refused.is_error and "read-only directory" in text(refused)
    assert Memory.objects.get(store=facts, path="/fact.md").content == "water is wet"
    # Other writers' changes still come in before each call.
    prefs = Memory.objects.get(store=store, path="/prefs.md")
    memory.memory_update(store=store, memory=prefs, body={"content": "likes juice\n"}, actor=None)
    assert "likes juice" in text(run(session, "bash", command=f"cat {prefs_dir}/prefs.md"))
