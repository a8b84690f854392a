"""Wake-ups and live previews for event streams (design.md, "Streaming").

The log is the truth: a subscriber reads events after the last seq it saw, then waits here for a
hint that more were appended. A lost hint costs latency (the wait times out and the subscriber
reads again), never an event. With Redis the hints go over pub/sub; the embedded default sends
them as Unix datagrams between the processes of one host (sessions/localbus.py). Either way a
subscriber also re-reads the log every GALLEY_SSE_POLL_SECONDS, in case a hint was lost.

Live previews (`event_start` / `event_delta`) are never written to the log. They travel on the
same channel as the wake-ups.
"""

import asyncio
import json
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from api.ids import new_id
from api.wire import iso
from sessions import localbus

log = logging.getLogger(__name__)

_sync_client: Any = None


def _channel(session_id: str) -> str:
    return f"{settings.GALLEY_REDIS_PREFIX}:session:{session_id}"


def _redis() -> Any:
    global _sync_client
    if _sync_client is None:
        import redis

        _sync_client = redis.Redis.from_url(settings.REDIS_URL or "")
    return _sync_client


def _publish(session_id: str, message: dict[str, Any]) -> None:
    if not settings.REDIS_URL:
        _local_publish(session_id, message)
        localbus.send(session_id, message)
        return
    try:
        _redis().publish(_channel(session_id), json.dumps(message))
    except Exception:  # a lost hint only costs latency; never fail the writer
        log.warning("could not publish a stream wake-up for %s", session_id, exc_info=True)


def notify(session_id: str, seq: int) -> None:
    """Tell subscribers that events up to `seq` are committed. Call after commit."""
    _publish(session_id, {"kind": "wake", "seq": seq})


def publish_preview(session_id: str, thread_id: str | None, frame: dict[str, Any]) -> None:
    """Send a live preview frame (event_start / event_delta) to subscribers that asked for them."""
    _publish(session_id, {"kind": "preview", "thread_id": thread_id, "frame": frame})


# What one message of previews may carry: a datagram of the local bus holds at most 64 KiB, and a character
# of text takes at most 12 bytes of JSON (an escaped surrogate pair).
_PREVIEWS_BYTES = 48 * 1024


def publish_previews(session_id: str, thread_id: str | None, frames: list[dict[str, Any]]) -> None:
    """Send several preview frames in as few messages as fit (subscribers see each frame as from
    `publish_preview`, in order)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for frame in frames:
        content = (frame.get("delta") or {}).get("content") or {}
        cost = 200 + 12 * len(content.get("text") or "")
        if batch and size + cost > _PREVIEWS_BYTES:
            _publish_batch(session_id, thread_id, batch)
            batch, size = [], 0
        batch.append(frame)
        size += cost
    if batch:
        _publish_batch(session_id, thread_id, batch)


def _publish_batch(session_id: str, thread_id: str | None, frames: list[dict[str, Any]]) -> None:
    if len(frames) == 1:
        publish_preview(session_id, thread_id, frames[0])
    else:
        _publish(session_id, {"kind": "previews", "thread_id": thread_id, "frames": frames})


def _expanded(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A `previews` message as the `preview` messages it carries; any other message as itself."""
    if message.get("kind") != "previews":
        return [message]
    thread_id = message.get("thread_id")
    frames = message.get("frames")
    return [
        {"kind": "preview", "thread_id": thread_id, "frame": frame}
        for frame in (frames if isinstance(frames, list) else [])
        if isinstance(frame, dict)
    ]


def publish_deleted(session_id: str, event: dict[str, Any]) -> None:
    """Hand the `session.deleted` event to open streams: the log it would be read from is gone."""
    _publish(session_id, {"kind": "deleted", "event": event})


# --- in-process fan-out (embedded default; also what tests in one process see) -------------------
_local: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
_local_loops: dict[int, asyncio.AbstractEventLoop] = {}
_local_threads: dict[str, set[threading.Event]] = {}  # sync waiters (`wakeups`)


def _local_publish(session_id: str, message: dict[str, Any]) -> None:
    if message.get("kind") not in localbus.PREVIEW_KINDS:
        for flag in list(_local_threads.get(session_id, ())):
            flag.set()
    for queue in list(_local.get(session_id, ())):
        loop = _local_loops.get(id(queue))
        if loop is None or loop.is_closed():
            continue
        try:
            loop.call_soon_threadsafe(queue.put_nowait, message)
        except RuntimeError:
            pass


class Subscription:
    """Yields wake and preview messages (one per preview frame, also of a `previews` message); `get(timeout)`
    returns None when nothing came in time."""

    def __init__(self, queue: "asyncio.Queue[dict[str, Any]]", pubsub: Any = None) -> None:
        self._queue = queue
        self._pubsub = pubsub
        self._pending: list[dict[str, Any]] = []

    async def get(self, timeout: float) -> dict[str, Any] | None:
        if not self._pending:
            message = await self._next(timeout)
            if message is None:
                return None
            self._pending = _expanded(message)[::-1]
            if not self._pending:
                return None
        return self._pending.pop()

    async def _next(self, timeout: float) -> dict[str, Any] | None:
        if self._pubsub is not None:
            msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
            if msg is None or msg.get("type") != "message":
                return None
            try:
                decoded = json.loads(msg["data"])
            except (ValueError, TypeError):
                return None
            return decoded if isinstance(decoded, dict) else None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None


@asynccontextmanager
async def subscribe(session_id: str) -> AsyncIterator[Subscription]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    if settings.REDIS_URL:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        pubsub = client.pubsub()
        await pubsub.subscribe(_channel(session_id))
        try:
            yield Subscription(queue, pubsub)
        finally:
            try:
                await pubsub.unsubscribe()
                await pubsub.aclose()
                await client.aclose()
            except Exception:
                log.debug("closing a stream subscription failed", exc_info=True)
        return
    localbus.listen(_local_publish)
    _local.setdefault(session_id, set()).add(queue)
    _local_loops[id(queue)] = asyncio.get_running_loop()
    localbus.watch(session_id)
    try:
        yield Subscription(queue)
    finally:
        localbus.unwatch(session_id)
        _local.get(session_id, set()).discard(queue)
        _local_loops.pop(id(queue), None)
        if not _local.get(session_id):
            _local.pop(session_id, None)


class Wakeups:
    """A thread's subscription to a session's wake-ups (not its previews): `wait(timeout)` is True
    when events were appended since the last wait, False when the timeout passed first."""

    def __init__(self, flag: threading.Event | None = None, pubsub: Any = None) -> None:
        self._flag = flag
        self._pubsub = pubsub

    def wait(self, timeout: float) -> bool:
        if self._pubsub is None:
            assert self._flag is not None
            woke = self._flag.wait(timeout)
            self._flag.clear()
            return woke
        msg = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        while msg is not None:
            try:
                if (
                    msg.get("type") == "message"
                    and json.loads(msg["data"]).get("kind") not in localbus.PREVIEW_KINDS
                ):
                    return True
            except (ValueError, TypeError, AttributeError):
                return True  # unreadable: treat it as a hint, the caller reads the log anyway
            msg = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
        return False


@contextmanager
def wakeups(session_id: str) -> Iterator[Wakeups]:
    """Subscribe a (non-async) thread to a session's wake-ups: the harness waiting for a
    self-hosted worker's answer. Subscribe before reading the log, then wait and read again."""
    if settings.REDIS_URL:
        pubsub = _redis().pubsub()
        try:
            pubsub.subscribe(_channel(session_id))
            yield Wakeups(pubsub=pubsub)
        finally:
            try:
                pubsub.close()
            except Exception:
                log.debug("closing a wake-up subscription failed", exc_info=True)
        return
    localbus.listen(_local_publish)
    flag = threading.Event()
    _local_threads.setdefault(session_id, set()).add(flag)
    localbus.watch(session_id)
    try:
        yield Wakeups(flag=flag)
    finally:
        localbus.unwatch(session_id)
        waiters = _local_threads.get(session_id, set())
        waiters.discard(flag)
        if not waiters:
            _local_threads.pop(session_id, None)


# --- the SSE response body (spec 8) ---------------------------------------------------------------
CLOSING_TYPES = frozenset({"session.status_terminated", "session.deleted"})
_READ_BATCH = 500


def sse_frame(event_type: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    text = f"event: {event_type}\ndata: {json.dumps(data, separators=(',', ':'))}\n"
    if seq is not None:
        text += f"id: {seq}\n"
    return (text + "\n").encode()


def _read_log(
    session_id: str, thread: Any, after: int, woken: bool = False
) -> tuple[list[Any], int, str | None]:
    """Events after `after` for the stream's thread, the seq read up to, and the session's status
    with that read (None once it is deleted; "reading" when a full batch leaves more to read).
    `woken`: a wake-up announced new events (sessions.services.events_since)."""
    from django.db import InterfaceError, OperationalError, connection

    from sessions.services import events_since

    try:
        rows, last_seq, status = events_since(
            session_id=session_id, thread=thread, after_seq=after, woken=woken, limit=_READ_BATCH
        )
    except (OperationalError, InterfaceError):
        log.warning("a stream could not read the log; retrying", exc_info=True)
        connection.close()
        return [], after, "unknown"
    finally:
        if getattr(connection, "pool", None) is not None:  # PostgreSQL's pool; SQLite has none
            connection.close()  # back to the pool: a waiting stream holds no connection
    if len(rows) == _READ_BATCH:
        return rows, rows[-1].seq, "reading"
    return rows, last_seq, status


async def sse_events(
    *,
    session_id: str,
    thread: Any,
    primary: bool,
    after_seq: int,
    deltas: frozenset[str] = frozenset(),
) -> AsyncIterator[bytes]:
    """The SSE body. A failure inside ends the stream with an `error` frame (the SDK raises it)
    rather than a cut connection; the client reconnects and reads the log for what it missed."""
    frames = _log_frames(
        session_id=session_id, thread=thread, primary=primary, after_seq=after_seq, deltas=deltas
    )
    async with aclosing(frames):
        try:
            async for frame in frames:
                yield frame
        except Exception:
            log.exception("the event stream for %s failed", session_id)
            error = {
                "type": "api_error",
                "message": "The event stream failed; reconnect and list events to resume.",
            }
            yield sse_frame("error", {"type": "error", "error": error})


async def _log_frames(
    *,
    session_id: str,
    thread: Any,
    primary: bool,
    after_seq: int,
    deltas: frozenset[str],
) -> AsyncGenerator[bytes]:
    """Stream the log of one session (or thread) from `after_seq`: read, then wait for a wake-up or
    the poll interval, and read again. Previews are forwarded only when asked for, for this thread."""
    # Off the shared sync thread: a stream's reads must not queue behind (or block) API requests.
    read = sync_to_async(_read_log, thread_sensitive=False)
    loop = asyncio.get_running_loop()
    heartbeat = float(settings.GALLEY_SSE_HEARTBEAT_SECONDS)
    poll = float(settings.GALLEY_SSE_POLL_SECONDS)
    thread_id = getattr(thread, "pk", None)
    previewing: set[str] = set()
    last = after_seq
    woken = False
    async with subscribe(session_id) as sub:
        yield b": connected\n\n"
        next_beat = loop.time() + heartbeat
        while True:
            rows, last, status = await read(session_id, thread, last, woken)
            woken = False
            for row in rows:
                yield sse_frame(row.type, row.wire(), row.seq)
                previewing.discard(row.pk)
                if row.type in CLOSING_TYPES:
                    return
            if status is None:
                # The deletion removed the log; the hint carrying the real event was missed or lost.
                gone = {"id": new_id("sevt"), "type": "session.deleted", "processed_at": iso(timezone.now())}
                yield sse_frame("session.deleted", gone)
                return
            if status == "terminated":
                return  # caught up with a session that can never produce another event
            if status == "reading":
                woken = True  # a full batch: more is there to read
                continue
            next_poll = loop.time() + poll
            while True:
                now = loop.time()
                if now >= next_beat:
                    yield b'event: ping\ndata: {"type":"ping"}\n\n'
                    next_beat = now + heartbeat
                if now >= next_poll:
                    break  # the safety re-read of the log (a heartbeat alone does not read)
                wait = max(0.0, min(next_poll, next_beat) - now)
                try:
                    message = await sub.get(wait)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the bus is only a hint: without it, keep polling the log
                    log.warning("stream wake-ups failed for %s; polling", session_id, exc_info=True)
                    await asyncio.sleep(wait)
                    message = None
                if message is None:
                    continue
                kind = message.get("kind")
                if kind == "wake":
                    if int(message.get("seq", 0)) > last:
                        woken = True
                        break
                elif kind == "deleted":
                    event = message.get("event") or {}
                    yield sse_frame("session.deleted", event)
                    return
                elif kind == "preview" and deltas:
                    frame = message.get("frame") or {}
                    source = message.get("thread_id")
                    if not (source == thread_id or (primary and source is None)):
                        continue
                    if frame.get("type") == "event_start":
                        inner = frame.get("event") or {}
                        if inner.get("type") in deltas:
                            previewing.add(str(inner.get("id")))
                            yield sse_frame("event_start", frame)
                    elif frame.get("type") == "event_delta" and frame.get("event_id") in previewing:
                        yield sse_frame("event_delta", frame)
