"""The event log under concurrency, and the stream generator's own behaviour (heartbeats, previews,
cleanup on disconnect). Runs on whichever database/Redis the environment selects."""

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, transaction

from sessions import streaming
from sessions.models import Event, Session
from sessions.services import NewEvent, events_append, session_create
from tests.session_fixtures import make_agent, make_environment

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _drop_reader_connections():  # type: ignore[no-untyped-def]
    """Stream reads run on executor threads that keep their own connections (as in the server);
    PostgreSQL will not drop the test database while they are open."""
    yield
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture
def session(workspace) -> Session:  # type: ignore[no-untyped-def]
    agent = make_agent(workspace)
    env = make_environment(workspace)
    return session_create(workspace=workspace, body={"agent": agent.id, "environment_id": env.id})


def test_concurrent_appends_get_gapless_seqs_and_a_reader_never_sees_a_gap(session):
    writers, rounds, per_append = 4, 15, 2
    total = writers * rounds * per_append
    errors: list[BaseException] = []
    seen: list[int] = []

    def write(n: int) -> None:
        try:
            for r in range(rounds):
                with transaction.atomic():
                    events_append(
                        session=session.pk,
                        events=[
                            NewEvent("agent.message", {"content": [], "w": n, "r": r})
                            for _ in range(per_append)
                        ],
                    )
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    def read() -> None:
        last = 0
        deadline = time.monotonic() + 60  # bounded by time, not by a count a loaded machine can exhaust
        try:
            while time.monotonic() < deadline:
                rows, last, status = streaming._read_log(session.pk, None, last)
                assert status is not None
                seen.extend(row.seq for row in rows)
                if len(seen) >= total:
                    return
                if not rows:
                    time.sleep(0.001)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)] + [
        threading.Thread(target=read)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert sorted(Event.objects.filter(session=session).values_list("seq", flat=True)) == list(
        range(1, total + 1)
    )
    assert seen == list(range(1, total + 1))
    assert Session.objects.get(pk=session.pk).last_seq == total


def _subscribers(session_id: str) -> int:
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        try:
            return int(
                dict(client.pubsub_numsub(streaming._channel(session_id)))[
                    streaming._channel(session_id).encode()
                ]
            )
        finally:
            client.close()
    return len(streaming._local.get(session_id, ()))


async def _collect(gen: Any, into: list[bytes], stop: str | None = None) -> None:
    async for frame in gen:
        into.append(frame)
        if stop and stop.encode() in frame:
            return


def test_the_stream_releases_its_subscription_when_the_client_goes_away(session):
    async def scenario() -> tuple[int, int]:
        frames: list[bytes] = []
        gen = streaming.sse_events(session_id=session.pk, thread=None, primary=True, after_seq=0)
        task = asyncio.create_task(_collect(gen, frames))
        await asyncio.sleep(0.5)
        during = _subscribers(session.pk)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await gen.aclose()
        await asyncio.sleep(0.2)
        return during, _subscribers(session.pk)

    during, after = asyncio.run(scenario())
    assert (during, after) == (1, 0)


@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "one-message"])
def test_the_stream_sends_heartbeats_and_forwards_only_requested_previews(session, settings, together):
    """Previews arrive one per message, or several in one (what one read of the model's stream brought):
    the stream forwards the same frames in the same order either way."""
    settings.GALLEY_SSE_HEARTBEAT_SECONDS = 0.2

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        asked: list[bytes] = []
        plain: list[bytes] = []
        with_deltas = streaming.sse_events(
            session_id=session.pk, thread=None, primary=True, after_seq=0, deltas=frozenset({"agent.message"})
        )
        without = streaming.sse_events(session_id=session.pk, thread=None, primary=True, after_seq=0)
        tasks = [
            asyncio.create_task(_collect(with_deltas, asked, "session.status_terminated")),
            asyncio.create_task(_collect(without, plain, "session.status_terminated")),
        ]
        await asyncio.sleep(0.5)
        frames = [
            {"type": "event_start", "event": {"type": "agent.thinking", "id": "sevt_T"}},
            {"type": "event_start", "event": {"type": "agent.message", "id": "sevt_M"}},
            {
                "type": "event_delta",
                "event_id": "sevt_M",
                "delta": {"type": "content_delta", "index": 0, "content": {"type": "text", "text": "Hi"}},
            },
            {"type": "event_delta", "event_id": "sevt_T", "delta": {}},
        ]
        if together:
            await asyncio.to_thread(streaming.publish_previews, session.pk, "sthr_other", frames)
            await asyncio.to_thread(streaming.publish_previews, session.pk, None, frames)
        for frame in frames if not together else []:
            await asyncio.to_thread(streaming.publish_preview, session.pk, "sthr_other", frame)
            await asyncio.to_thread(streaming.publish_preview, session.pk, None, frame)

        def finish() -> None:
            with transaction.atomic():
                events_append(
                    session=session.pk,
                    events=[
                        NewEvent("agent.message", {"content": []}, id="sevt_M"),
                        NewEvent("session.status_terminated"),
                    ],
                )
            connection.close()

        await asyncio.to_thread(finish)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return asked, plain

    asked, plain = asyncio.run(scenario())
    kinds = [f.split(b"\n", 1)[0] for f in asked if f.startswith(b"event:")]
    assert b"event: ping" in kinds
    assert [k for k in kinds if k != b"event: ping"] == [
        b"event: event_start",
        b"event: event_delta",
        b"event: agent.message",
        b"event: session.status_terminated",
    ]
    assert b'"sevt_M"' in asked[[i for i, f in enumerate(asked) if f.startswith(b"event: event_start")][0]]
    plain_kinds = [
        f.split(b"\n", 1)[0] for f in plain if f.startswith(b"event:") and not f.startswith(b"event: ping")
    ]
    assert plain_kinds == [b"event: agent.message", b"event: session.status_terminated"]
    assert any(b"\nid: " in f for f in plain)


def test_a_failing_read_ends_the_stream_with_an_error_frame_and_releases_it(session, monkeypatch):
    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(streaming, "_read_log", broken)

    async def scenario() -> list[bytes]:
        frames: list[bytes] = []
        gen = streaming.sse_events(session_id=session.pk, thread=None, primary=True, after_seq=0)
        await asyncio.wait_for(_collect(gen, frames), 5)
        return frames

    frames = asyncio.run(scenario())
    assert frames[-1].startswith(b"event: error\ndata: ") and b'"api_error"' in frames[-1]
    assert b"boom" not in frames[-1]
    assert _subscribers(session.pk) == 0


def test_many_previews_are_split_into_messages_that_fit_a_datagram(session, monkeypatch):
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(streaming, "_publish", lambda session_id, message: sent.append(message))
    text = "\U0001f600" * 1000  # 12 bytes of JSON each, escaped
    frames = [
        {"type": "event_delta", "event_id": "e", "delta": {"content": {"type": "text", "text": text}}}
        for _ in range(10)
    ]
    streaming.publish_previews(session.pk, None, frames)
    assert len(sent) > 1
    assert [f for m in sent for f in m.get("frames", [m.get("frame")])] == frames
    assert all(len(json.dumps([session.pk, m], separators=(",", ":"))) <= 64 * 1024 for m in sent)
