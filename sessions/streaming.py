"""Wake-ups and live previews for event streams (design.md, "Streaming").

The log is the truth: a subscriber reads events after the last seq it saw, then waits here for a
hint that more were appended. A lost hint costs latency (the wait times out and the subscriber
reads again), never an event. With Redis the hints go over pub/sub; the embedded default has no
cross-process bus, so subscribers poll the log every GALLEY_SSE_POLL_SECONDS.

Live previews (`event_start` / `event_delta`) are never written to the log. They travel on the
same channel, so on the embedded default they only reach subscribers in the publishing process.
"""

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

_sync_client: Any = None


def _channel(session_id: str) -> str:
    return f"{settings.GALLEY_REDIS_PREFIX}:session:{session_id}"


def _redis() -> Any:
    global _sync_client
    if _sync_client is None:
        import redis

        _sync_client = redis.Redis.from_url(settings.REDIS_URL)
    return _sync_client


def _publish(session_id: str, message: dict[str, Any]) -> None:
    if not settings.REDIS_URL:
        _local_publish(session_id, message)
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


# --- in-process fan-out (embedded default; also what tests in one process see) -------------------
_local: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
_local_loops: dict[int, asyncio.AbstractEventLoop] = {}


def _local_publish(session_id: str, message: dict[str, Any]) -> None:
    for queue in list(_local.get(session_id, ())):
        loop = _local_loops.get(id(queue))
        if loop is None or loop.is_closed():
            continue
        try:
            loop.call_soon_threadsafe(queue.put_nowait, message)
        except RuntimeError:
            pass


class Subscription:
    """Yields wake and preview messages; `get(timeout)` returns None when nothing came in time."""

    def __init__(self, queue: "asyncio.Queue[dict[str, Any]]", pubsub: Any = None) -> None:
        self._queue = queue
        self._pubsub = pubsub

    async def get(self, timeout: float) -> dict[str, Any] | None:
        if self._pubsub is not None:
            msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
            if msg is None or msg.get("type") != "message":
                return None
            try:
                return json.loads(msg["data"])
            except (ValueError, TypeError):
                return None
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
    _local.setdefault(session_id, set()).add(queue)
    _local_loops[id(queue)] = asyncio.get_running_loop()
    try:
        yield Subscription(queue)
    finally:
        _local.get(session_id, set()).discard(queue)
        _local_loops.pop(id(queue), None)
        if not _local.get(session_id):
            _local.pop(session_id, None)
