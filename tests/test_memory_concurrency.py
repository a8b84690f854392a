"""Races on one memory (run on PostgreSQL and SQLite): two creates of one path, two updates from
the same read (content_sha256 precondition), an update racing a delete. Exactly one wins, the
other gets a 409, and every change has exactly one version."""

import pytest

from memory import services
from memory.models import Memory, MemoryVersion
from tests.concurrency import race

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def store(workspace):  # type: ignore[no-untyped-def]
    return services.store_create(workspace=workspace, body={"name": "race"})


def test_two_creates_of_one_path(store) -> None:
    outcomes = race(lambda: services.memory_create(store=store, path="/same.md", content="x", actor=None))
    assert sorted(o if isinstance(o, int) else 200 for o in outcomes) == [200, 409]
    assert Memory.objects.filter(store=store).count() == 1
    assert MemoryVersion.objects.filter(store=store).count() == 1


def test_two_updates_from_the_same_read(store) -> None:
    memory = services.memory_create(store=store, path="/doc.md", content="v0", actor=None)
    read = memory.content_sha256
    texts = iter(["from a", "from b"])

    def update():  # type: ignore[no-untyped-def]
        body = {"content": next(texts), "precondition": {"type": "content_sha256", "content_sha256": read}}
        return services.memory_update(store=store, memory=memory, body=body, actor=None)

    outcomes = race(update)
    assert sorted(o if isinstance(o, int) else 200 for o in outcomes) == [200, 409]
    [winner] = [o for o in outcomes if not isinstance(o, int)]
    assert Memory.objects.get(pk=memory.pk).content == winner.content
    assert MemoryVersion.objects.filter(memory_id=memory.pk, operation="modified").count() == 1


def test_an_update_racing_a_delete(store) -> None:
    memory = services.memory_create(store=store, path="/doc.md", content="v0", actor=None)
    read = memory.content_sha256
    calls = iter(["update", "delete"])

    def call():  # type: ignore[no-untyped-def]
        if next(calls) == "update":
            body = {"content": "v1", "precondition": {"type": "content_sha256", "content_sha256": read}}
            return services.memory_update(store=store, memory=memory, body=body, actor=None)
        return services.memory_delete(store=store, memory=memory, expected_sha=read, actor=None)

    outcomes = race(call)
    statuses = sorted(o if isinstance(o, int) else 200 for o in outcomes)
    assert statuses in ([200, 404], [200, 409])
    operations = sorted(MemoryVersion.objects.filter(memory_id=memory.pk).values_list("operation", flat=True))
    assert operations in (["created", "deleted"], ["created", "modified"])
