"""SDK contract tests: sessions, events, streams and threads through the official `anthropic`
client with strict response validation, against a live server (Daphne + worker)."""

import secrets
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.live import LiveGalley

MESSAGE = {"type": "user.message", "content": [{"type": "text", "text": "hello"}]}


@pytest.fixture(scope="module")
def ids(live: LiveGalley) -> dict[str, str]:
    client = live.client()
    suffix = secrets.token_hex(3)
    agent = client.beta.agents.create(name=f"session-agent-{suffix}", model="claude-sonnet-4-6", system="v1")
    client.beta.agents.update(agent.id, system="v2")  # version 2 is the latest
    env = client.beta.environments.create(name=f"session-env-{suffix}")
    return {"agent": agent.id, "environment": env.id}


@pytest.fixture
def client(live: LiveGalley) -> anthropic.Anthropic:
    return live.client()


def _read_until(stream: Iterator[Any], last_type: str, limit: int = 50) -> list[Any]:
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == last_type or len(seen) >= limit:
            break
    return seen


def test_create_pins_versions_and_retrieve_round_trips(client, ids):
    pinned = client.beta.sessions.create(
        agent={"type": "agent", "id": ids["agent"], "version": 1},
        environment_id=ids["environment"],
        title="pinned",
        metadata={"a": "b"},
    )
    vault = client.beta.vaults.create(display_name="session vault")
    latest = client.beta.sessions.create(
        agent=ids["agent"], environment_id=ids["environment"], vault_ids=[vault.id]
    )
    assert latest.vault_ids == [vault.id]
    assert pinned.agent.version == 1 and latest.agent.version == 2
    assert pinned.status == "idle" and pinned.vault_ids == [] and pinned.resources == []
    got = client.beta.sessions.retrieve(pinned.id)
    assert got.id == pinned.id and got.title == "pinned" and got.metadata == {"a": "b"}
    assert got.usage.list_cost is not None and got.usage.list_cost.amount == "0"
    assert got.stats.active_seconds == 0
    overridden = client.beta.sessions.create(
        agent={
            "type": "agent_with_overrides",
            "id": ids["agent"],
            "system": "override",
            "model": "claude-opus-4-7",
        },
        environment_id=ids["environment"],
    )
    assert overridden.agent.system == "override" and overridden.agent.model.id == "claude-opus-4-7"
    assert client.beta.agents.retrieve(ids["agent"]).system == "v2"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.create(
            agent={"type": "agent", "id": ids["agent"], "version": 9}, environment_id=ids["environment"]
        )


def test_list_filters_and_auto_pagination_terminates(client, ids):
    created = [
        client.beta.sessions.create(
            agent=ids["agent"], environment_id=ids["environment"], metadata={"batch": "list"}
        ).id
        for _ in range(3)
    ]
    page = client.beta.sessions.list(limit=2, agent_id=ids["agent"], statuses=["idle"])
    listed = [s.id for s in page]  # auto-pagination follows next_page until null
    assert set(created) <= set(listed) and len(listed) == len(set(listed))
    first = client.beta.sessions.list(limit=2, order="asc")
    assert first.prev_page is None if hasattr(first, "prev_page") else True
    later = client.beta.sessions.list(
        created_at_gte=client.beta.sessions.retrieve(created[-1]).created_at, agent_id=ids["agent"]
    )
    assert created[-1] in [s.id for s in later.data]
    with pytest.raises(anthropic.BadRequestError):
        client.beta.sessions.list(agent_version=1)


def test_update_archive_and_delete(client, ids):
    session = client.beta.sessions.create(agent=ids["agent"], environment_id=ids["environment"], title="old")
    updated = client.beta.sessions.update(session.id, title="new", metadata={"x": "1"})
    assert updated.title == "new" and updated.metadata == {"x": "1"}
    tooled = client.beta.sessions.update(session.id, agent={"tools": [{"type": "agent_toolset_20260401"}]})
    assert [t.type for t in tooled.agent.tools] == ["agent_toolset_20260401"]
    assert client.beta.agents.retrieve(ids["agent"]).tools == []  # the agent itself is untouched
    changes = [e for e in client.beta.sessions.events.list(session.id) if e.type == "session.updated"]
    assert len(changes) == 2 and changes[0].title == "new" and changes[0].agent is None
    assert changes[1].agent is not None and changes[1].title is None
    archived = client.beta.sessions.archive(session.id)
    assert archived.archived_at is not None and archived.status == "terminated"
    with pytest.raises(anthropic.ConflictError):
        client.beta.sessions.events.send(session.id, events=[MESSAGE])
    with client.beta.sessions.events.stream(session.id) as stream:
        assert list(stream) == []  # terminated: nothing more can come, so the stream ends at once
    deleted = client.beta.sessions.delete(session.id)
    assert deleted.id == session.id and deleted.type == "session_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.retrieve(session.id)


def test_events_send_and_list_with_filters_order_and_paging(client, ids):
    session = client.beta.sessions.create(agent=ids["agent"], environment_id=ids["environment"])
    sent = client.beta.sessions.events.send(session.id, events=[MESSAGE])
    assert sent.data is not None and sent.data[0].type == "user.message" and sent.data[0].processed_at is None
    client.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
    everything = list(client.beta.sessions.events.list(session.id, limit=1))
    assert [e.type for e in everything][:3] == ["user.message", "session.status_running", "user.interrupt"]
    messages = client.beta.sessions.events.list(session.id, types=["user.message"]).data
    assert [e.id for e in messages] == [sent.data[0].id]
    newest_first = client.beta.sessions.events.list(session.id, order="desc").data
    # A worker takes the session meanwhile and may append more (the log only grows): the older listing
    # is where the newer one ends, in reverse.
    oldest_first = [e.id for e in newest_first][::-1]
    assert oldest_first[: len(everything)] == [e.id for e in everything]
    assert len(set(oldest_first)) == len(oldest_first)
    with pytest.raises(anthropic.BadRequestError):
        client.beta.sessions.events.list(session.id, types=["user.bogus"])  # type: ignore[list-item]


def test_a_stream_opened_before_send_receives_the_echo(client, ids):
    session = client.beta.sessions.create(agent=ids["agent"], environment_id=ids["environment"])
    with client.beta.sessions.events.stream(session.id) as stream:
        sent = client.beta.sessions.events.send(session.id, events=[MESSAGE])
        seen = _read_until(stream, "session.status_running")
    assert [e.type for e in seen][:2] == ["user.message", "session.status_running"]
    assert seen[0].id == sent.data[0].id


def test_two_concurrent_streams_both_receive_every_event(client, ids):
    session = client.beta.sessions.create(agent=ids["agent"], environment_id=ids["environment"])
    results: dict[str, list[str]] = {}

    def read(name: str, ready: threading.Event) -> None:
        with client.beta.sessions.events.stream(session.id) as stream:
            ready.set()
            results[name] = [e.type for e in _read_until(stream, "session.status_terminated")]

    readies = [threading.Event(), threading.Event()]
    workers = [threading.Thread(target=read, args=(str(i), readies[i])) for i in range(2)]
    for worker in workers:
        worker.start()
    for ready in readies:
        assert ready.wait(10)
    client.beta.sessions.events.send(session.id, events=[MESSAGE])
    client.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
    client.beta.sessions.archive(session.id)
    for worker in workers:
        worker.join(20)
        assert not worker.is_alive()
    assert results["0"] == results["1"]
    assert results["0"][:2] == ["user.message", "session.status_running"]
    # Whether the worker's step asked the model before the interrupt landed depends on timing: the interrupt
    # is there either way, once.
    assert results["0"].count("user.interrupt") == 1
    assert results["0"][-1] == "session.status_terminated"


def test_deleting_a_session_ends_open_streams_with_session_deleted(client, ids):
    session = client.beta.sessions.create(agent=ids["agent"], environment_id=ids["environment"])
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.delete(session.id)
        seen = [e.type for e in stream]  # the server closes the stream after session.deleted
    assert seen == ["session.deleted"]


def test_stream_errors_are_json_before_streaming(client, ids):
    with pytest.raises(anthropic.NotFoundError):
        with client.beta.sessions.events.stream("sesn_01NOPE"):
            pass
    session = client.beta.sessions.create(agent=ids["agent"], environment_id=ids["environment"])
    with pytest.raises(anthropic.BadRequestError):
        with client.beta.sessions.events.stream(session.id, event_deltas=["agent.tool_use"]):  # type: ignore[list-item]
            pass


def test_threads_list_and_retrieve(client, ids):
    session = client.beta.sessions.create(agent=ids["agent"], environment_id=ids["environment"])
    threads = list(client.beta.sessions.threads.list(session.id))
    assert len(threads) == 1 and threads[0].parent_thread_id is None and threads[0].session_id == session.id
    one = client.beta.sessions.threads.retrieve(threads[0].id, session_id=session.id)
    assert one.id == threads[0].id and one.agent.type == "agent"
    with client.beta.sessions.threads.events.stream(threads[0].id, session_id=session.id) as stream:
        client.beta.sessions.events.send(session.id, events=[MESSAGE])
        seen = _read_until(stream, "session.status_running")
    assert [e.type for e in seen][:2] == ["user.message", "session.status_running"]
    assert [e.type for e in client.beta.sessions.threads.events.list(threads[0].id, session_id=session.id)][
        :2
    ] == ["user.message", "session.status_running"]
    with pytest.raises(anthropic.NotFoundError) as info:
        client.beta.sessions.threads.retrieve("sthr_01NOPE", session_id=session.id)
    assert info.value.body["error"]["details"]["error_code"] == "thread_not_found"


def test_last_event_id_replays_the_log_after_that_event(client, ids):
    session = client.beta.sessions.create(agent=ids["agent"], environment_id=ids["environment"])
    client.beta.sessions.events.send(session.id, events=[MESSAGE])
    client.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
    with client.beta.sessions.events.stream(session.id, extra_headers={"Last-Event-ID": "1"}) as stream:
        seen = _read_until(stream, "user.interrupt")
    # The harness may append its own events between the two (the live server has no model).
    types = [e.type for e in seen]
    assert types[0] == "session.status_running" and types[-1] == "user.interrupt"
    assert "user.message" not in types


def test_a_stream_sees_events_another_process_appends_and_closes_on_termination(live, client, ids):
    session = client.beta.sessions.create(agent=ids["agent"], environment_id=ids["environment"])
    code = (
        "from django.db import transaction\n"
        "from sessions.models import Session\n"
        "from sessions.services import NewEvent, events_append, session_set_status\n"
        "with transaction.atomic():\n"
        f"    s = Session.objects.select_for_update().get(pk={session.id!r})\n"
        "    hi = {'content': [{'type': 'text', 'text': 'hi'}]}\n"
        "    events_append(session=s, events=[NewEvent('agent.message', hi)])\n"
        "    session_set_status(session=s, status='terminated')\n"
    )
    with client.beta.sessions.events.stream(session.id) as stream:
        live.manage("shell", "-c", code)
        seen = list(stream)  # ends when the server closes the stream after session.status_terminated
    assert [e.type for e in seen] == ["agent.message", "session.status_terminated"]
    assert seen[0].content[0].text == "hi"


def test_a_closed_stream_leaves_no_subscription_behind(live, client, ids):
    import os
    import time

    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        pytest.skip("subscriptions are only observable from outside the server through Redis")
    import redis

    session = client.beta.sessions.create(agent=ids["agent"], environment_id=ids["environment"])
    channel = f"{live.env['GALLEY_REDIS_PREFIX']}:session:{session.id}"
    probe = redis.Redis.from_url(redis_url)

    def count() -> int:
        return int(dict(probe.pubsub_numsub(channel))[channel.encode()])

    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(session.id, events=[MESSAGE])
        _read_until(stream, "user.message")
        assert count() == 1
    deadline = time.monotonic() + 5
    while count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count() == 0


def test_file_resources_given_at_create_show_on_the_session(client, ids):
    uploaded = client.beta.files.upload(file=("data.csv", b"a,b\n1,2\n", "text/csv"))
    session = client.beta.sessions.create(
        agent=ids["agent"],
        environment_id=ids["environment"],
        resources=[{"type": "file", "file_id": uploaded.id, "mount_path": "/mnt/session/uploads/data.csv"}],
    )
    assert [(r.type, r.file_id) for r in session.resources] == [("file", uploaded.id)]  # type: ignore[union-attr]
    listed = next(s for s in client.beta.sessions.list(agent_id=ids["agent"]) if s.id == session.id)
    assert [r.id for r in listed.resources] == [r.id for r in session.resources]
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.create(
            agent=ids["agent"],
            environment_id=ids["environment"],
            resources=[{"type": "file", "file_id": "file_01NOPE"}],
        )
