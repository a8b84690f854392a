"""Environment keys and the work queue of self_hosted environments (spec 4, self-hosted-worker.md).

The queue is the `WorkItem` table. Every transition is a conditional UPDATE on the row's id, its
`generation` (bumped on each hand-out) and the state it was read in, so any number of web
processes can serve polls and heartbeats for the same environment: two polls never hand out the
same generation of an item, and a worker whose item was reclaimed loses its heartbeats (412).
"""

import base64
import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import F, Min, Q
from django.utils import timezone

from agents.models import Environment
from api.errors import ApiError, bad_request, conflict, not_found
from api.ids import has_prefix, new_id
from api.pagination import Page, check_limit, paginate
from api.wire import iso, patch_metadata
from selfhosted.models import (
    LIVE_STATES,
    EnvironmentKey,
    WorkerPoll,
    WorkItem,
    WorkKind,
    WorkState,
    hash_secret,
)

ENVIRONMENT_KEY_PREFIX = "sk-galley-env-"
SESSIONS_TOKEN_PREFIX = "sk-galley-work-"
NO_HEARTBEAT = "NO_HEARTBEAT"
DEFAULT_RECLAIM_MS = 5000
WORKERS_POLLING_WINDOW = timedelta(seconds=30)
_WAKE_CHECK_SECONDS = 0.2  # re-read the queue this often during a long poll, in case a wake-up is lost


# --- environment keys ----------------------------------------------------------------------------------


def environment_key_create(
    *, environment: Environment, name: str, created_by: Any = None
) -> tuple[EnvironmentKey, str]:
    """A new key for a self_hosted environment. The raw key is returned once and never stored."""
    if not environment.is_self_hosted:
        raise bad_request(
            f"environment {environment.pk!r} is not self_hosted; only self_hosted environments have keys."
        )
    if environment.is_archived:
        raise bad_request(f"environment {environment.pk!r} is archived.", error_code="environment_archived")
    name = (name or "").strip()
    if not name or len(name) > 255:
        raise bad_request("name: must be 1-255 characters.")
    raw = ENVIRONMENT_KEY_PREFIX + secrets.token_urlsafe(32)
    key = EnvironmentKey.objects.create(
        id=new_id("envkey"),
        environment=environment,
        name=name,
        key_hash=hash_secret(raw),
        hint=raw[-4:],
        created_by=created_by,
    )
    return key, raw


def environment_key_revoke(*, key: EnvironmentKey) -> None:
    EnvironmentKey.objects.filter(pk=key.pk, revoked_at=None).update(revoked_at=timezone.now())


def environment_key_authenticate(raw: str) -> EnvironmentKey | None:
    if not raw.startswith(ENVIRONMENT_KEY_PREFIX):
        return None
    key = (
        EnvironmentKey.objects.select_related("environment", "environment__workspace")
        .filter(key_hash=hash_secret(raw), revoked_at=None)
        .first()
    )
    if key is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        # Throttled so that a polling worker does not turn every poll into a write.
        EnvironmentKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key


# --- sessions tokens (the work item's `secret`) ---------------------------------------------------------


@dataclass(frozen=True)
class TokenClaim:
    item: WorkItem
    generation: int
    current: bool  # False: the item was handed out again (or stopped) since this token was issued


def _new_sessions_token(work_id: str, generation: int) -> str:
    return f"{SESSIONS_TOKEN_PREFIX}{work_id}.{generation}.{secrets.token_urlsafe(24)}"


def sessions_token_check(raw: str) -> TokenClaim | None:
    """The work item a sessions token was issued for, or None for something that is not one."""
    if not raw.startswith(SESSIONS_TOKEN_PREFIX):
        return None
    parts = raw[len(SESSIONS_TOKEN_PREFIX) :].split(".")
    if len(parts) != 3 or not has_prefix(parts[0], "work") or not parts[1].isdigit():
        return None
    item = (
        WorkItem.objects.select_related("environment", "environment__workspace").filter(pk=parts[0]).first()
    )
    if item is None:
        return None
    generation = int(parts[1])
    if generation == item.generation:
        if not secrets.compare_digest(item.token_hash, hash_secret(raw)):
            return None
        return TokenClaim(item, generation, item.state != WorkState.STOPPED)
    if generation > item.generation:
        return None
    # An older generation's token: it cannot be verified any more (only the current hash is kept),
    # and it authorizes nothing; the heartbeat answers it with a 412 so its worker lets go.
    return TokenClaim(item, generation, False)


def work_secret(token: str) -> str:
    payload = json.dumps({"sessions_token": token}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


# --- the queue --------------------------------------------------------------------------------------------


def _channel(environment_id: str) -> str:
    # The streaming module's wake-up channel, keyed by a name that cannot be a session id.
    return f"workq-{environment_id}"


def _wake(environment_id: str) -> None:
    from sessions import streaming

    streaming.notify(_channel(environment_id), 0)


def work_enqueue(*, environment: Environment, session_id: str, kind: str = WorkKind.SESSION) -> WorkItem:
    item = WorkItem.objects.create(
        id=new_id("work"), environment=environment, session_id=session_id, kind=kind
    )
    transaction.on_commit(lambda: _wake(environment.pk))
    return item


def work_healthcheck_enqueue(*, environment: Environment) -> WorkItem:
    """Ask the environment's workers to show they are there: a `healthcheck` item, which a worker
    polls, acks and stops without running anything. Unanswered, it stops itself after
    GALLEY_HEALTHCHECK_TIMEOUT_SECONDS (`timed_out`), so a late worker never gets a stale check."""
    if not environment.is_self_hosted:
        raise bad_request(f"environment {environment.pk!r} is not self_hosted and has no workers to check.")
    if environment.is_archived:
        raise bad_request(f"environment {environment.pk!r} is archived.", error_code="environment_archived")
    return work_enqueue(environment=environment, session_id="", kind=WorkKind.HEALTHCHECK)


@dataclass(frozen=True)
class HealthcheckResult:
    item: WorkItem
    status: str  # "waiting" | "picked_up" | "answered" | "no_answer"
    took: timedelta | None  # enqueue to the worker's stop, for an answered check
    timeout_seconds: float

    @property
    def pending(self) -> bool:
        return self.status in ("waiting", "picked_up")

    @property
    def took_ms(self) -> int | None:
        return round(self.took.total_seconds() * 1000) if self.took is not None else None


def healthcheck_result(item: WorkItem, *, now: datetime | None = None) -> HealthcheckResult:
    """Where a healthcheck stands. Past its timeout without a stop it has no answer, whether or not
    a poll has yet stopped it (nobody may be polling at all)."""
    now = now or timezone.now()
    timeout = float(settings.GALLEY_HEALTHCHECK_TIMEOUT_SECONDS)
    took = None
    if item.state == WorkState.STOPPED and not item.timed_out and item.acknowledged_at is not None:
        status = "answered"
        took = item.stopped_at - item.created_at if item.stopped_at else None
    elif item.state == WorkState.STOPPED or now - item.created_at > timedelta(seconds=timeout):
        status = "no_answer"
    elif item.polled_at is not None:
        status = "picked_up"
    else:
        status = "waiting"
    return HealthcheckResult(item=item, status=status, took=took, timeout_seconds=timeout)


def healthcheck_latest(*, environment: Environment) -> HealthcheckResult | None:
    _finish_abandoned(environment.pk, timezone.now())
    item = (
        WorkItem.objects.filter(environment=environment, kind=WorkKind.HEALTHCHECK)
        .order_by("-created_at", "-id")
        .first()
    )
    return healthcheck_result(item) if item is not None else None


def work_ensure(*, environment: Environment, session_id: str) -> WorkItem | None:
    """Enqueue an item for a session of a self_hosted environment unless one is live (queued or
    held by a worker). Callers hold the session row's lock, so two callers cannot both enqueue."""
    if not environment.is_self_hosted or work_live(session_id=session_id):
        return None
    return work_enqueue(environment=environment, session_id=session_id)


def work_live(*, session_id: str) -> bool:
    """Whether the session has a live item: queued, or held by a worker."""
    return WorkItem.objects.filter(session_id=session_id, state__in=LIVE_STATES).exists()


def worker_wait_since(*, session_id: str, now: datetime | None = None) -> datetime | None:
    """Since when a session has waited for a worker that has not come: its item is queued and no
    worker acknowledged it, or its worker's lease ran out and nobody took it over. None when a
    worker holds it, or when it has no live item. The API says nothing more than `running`, as
    upstream; the console shows this."""
    now = now or timezone.now()
    waiting = None
    for item in WorkItem.objects.filter(session_id=session_id, kind=WorkKind.SESSION, state__in=LIVE_STATES):
        if item.state == WorkState.QUEUED:
            since = item.created_at
        elif item.lease_expires_at is not None and item.lease_expires_at < now:
            since = item.lease_expires_at
        else:
            return None  # a worker holds the session
        waiting = since if waiting is None else min(waiting, since)
    return waiting


def work_stop_for_session(*, session_id: str) -> int:
    """The session ended (terminated, archived or deleted): stop its items; tokens expire with them."""
    now = timezone.now()
    return (
        WorkItem.objects.filter(session_id=session_id)
        .exclude(state=WorkState.STOPPED)
        .update(state=WorkState.STOPPED, stopped_at=now, stop_requested_at=now, token_hash="")
    )


def _finish_abandoned(environment_id: str, now: datetime) -> None:
    # A stop was requested but the worker never came back to confirm it before its lease ran out;
    # or a healthcheck nobody stopped in time. Read first: on SQLite even an UPDATE that matches
    # nothing takes the write lock.
    items = WorkItem.objects.filter(environment_id=environment_id)
    abandoned = Q(state=WorkState.STOPPING, lease_expires_at__lt=now)
    expired = Q(
        kind=WorkKind.HEALTHCHECK,
        state__in=LIVE_STATES,
        created_at__lt=now - timedelta(seconds=settings.GALLEY_HEALTHCHECK_TIMEOUT_SECONDS),
    )
    if not items.filter(abandoned | expired).exists():
        return
    items.filter(abandoned).update(state=WorkState.STOPPED, stopped_at=now, token_hash="")
    items.filter(expired).update(state=WorkState.STOPPED, stopped_at=now, token_hash="", timed_out=True)


def _claimable(environment_id: str, now: datetime, reclaim_ms: int) -> Q:
    before = now - timedelta(milliseconds=reclaim_ms)
    return Q(environment_id=environment_id) & (
        # never handed out, or handed out and not acknowledged within reclaim_older_than_ms
        (Q(state=WorkState.QUEUED) & (Q(polled_at__isnull=True) | Q(polled_at__lt=before)))
        # acknowledged long ago but never heartbeated: the worker died before it started
        | Q(state=WorkState.STARTING, latest_heartbeat_at__isnull=True, acknowledged_at__lt=before)
        # the worker stopped heartbeating: its lease ran out
        | Q(state__in=(WorkState.STARTING, WorkState.ACTIVE), lease_expires_at__lt=now)
    )


def work_claim(*, environment: Environment, worker_id: str, reclaim_ms: int) -> tuple[WorkItem, str] | None:
    """Hand out the oldest claimable item: (item, sessions token), or None when there is none."""
    now = timezone.now()
    _finish_abandoned(environment.pk, now)
    candidates = list(
        WorkItem.objects.filter(_claimable(environment.pk, now, reclaim_ms)).order_by("created_at", "id")[:8]
    )
    for item in candidates:
        token = _new_sessions_token(item.pk, item.generation + 1)
        # Conditional UPDATE: of two polls that read the same candidate, only one matches its
        # (generation, state); the other sees 0 rows and tries the next candidate.
        won = WorkItem.objects.filter(pk=item.pk, generation=item.generation, state=item.state).update(
            state=WorkState.QUEUED,
            generation=F("generation") + 1,
            token_hash=hash_secret(token),
            worker_id=worker_id[:255],
            polled_at=now,
            acknowledged_at=None,
            started_at=None,
            latest_heartbeat_at=None,
            last_heartbeat="",
            lease_expires_at=None,
        )
        if won == 1:
            item.refresh_from_db()
            return item, token
    return None


_recorded: dict[tuple[str, str], float] = {}  # (environment, worker) -> when this process last wrote it
_RECORD_EVERY = 5.0


def worker_poll_record(*, environment: Environment, worker_id: str) -> None:
    """Remember that a worker polled. Written at most every few seconds per worker and process:
    a worker long-polls back to back, and stats only need "polled in the last 30 s"."""
    if not worker_id:
        return
    mark = (environment.pk, worker_id[:255])
    if time.monotonic() - _recorded.get(mark, -_RECORD_EVERY) < _RECORD_EVERY:
        return
    _recorded[mark] = time.monotonic()
    now = timezone.now()
    updated = WorkerPoll.objects.filter(environment=environment, worker_id=worker_id[:255]).update(
        last_polled_at=now, polls=F("polls") + 1
    )
    if not updated:
        WorkerPoll.objects.get_or_create(
            environment=environment, worker_id=worker_id[:255], defaults={"last_polled_at": now, "polls": 1}
        )


async def work_poll(
    *, environment: Environment, worker_id: str, block_ms: int | None, reclaim_ms: int
) -> tuple[WorkItem, str] | None:
    """Long-poll: wait up to block_ms for an item, woken by the enqueue's push (and re-reading the
    table every 200 ms in case a push was lost). Waits on the event loop, not on a thread."""
    from sessions import streaming

    await sync_to_async(worker_poll_record)(environment=environment, worker_id=worker_id)
    claim = sync_to_async(work_claim)
    if not block_ms:
        return await claim(environment=environment, worker_id=worker_id, reclaim_ms=reclaim_ms)
    deadline = time.monotonic() + block_ms / 1000
    found = await claim(environment=environment, worker_id=worker_id, reclaim_ms=reclaim_ms)
    if found is not None:
        return found
    async with streaming.subscribe(_channel(environment.pk)) as wakeups:
        while True:
            found = await claim(environment=environment, worker_id=worker_id, reclaim_ms=reclaim_ms)
            remaining = deadline - time.monotonic()
            if found is not None or remaining <= 0:
                return found
            await wakeups.get(min(remaining, _WAKE_CHECK_SECONDS))


def work_get(*, environment: Environment, work_id: str) -> WorkItem:
    item = None
    if has_prefix(work_id, "work"):
        item = WorkItem.objects.filter(pk=work_id, environment=environment).first()
    if item is None:
        raise not_found("work item", work_id)
    return item


def work_ack(*, item: WorkItem) -> WorkItem:
    now = timezone.now()
    acked = WorkItem.objects.filter(pk=item.pk, generation=item.generation, state=WorkState.QUEUED).update(
        state=WorkState.STARTING, acknowledged_at=now
    )
    item.refresh_from_db()
    if acked == 1 or item.state == WorkState.STARTING and item.latest_heartbeat_at is None:
        return item
    raise conflict(
        f"work item {item.pk!r} is {item.state}; only a queued work item can be acknowledged.",
        error_code="invalid_work_state",
    )


def _lease_state(item: WorkItem) -> dict[str, Any]:
    return {
        "state": item.state,
        "ttl_seconds": item.ttl_seconds or settings.GALLEY_WORK_LEASE_SECONDS,
        "last_heartbeat": item.last_heartbeat or None,
        "lease_extended": False,
    }


def _precondition_failed(item: WorkItem, message: str) -> ApiError:
    return ApiError(
        412,
        message,
        error_code="heartbeat_precondition_failed",
        details={"current_state": _lease_state(item)},
    )


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def work_heartbeat(
    *, item: WorkItem, expected: str | None, desired_ttl: int | None, generation: int | None
) -> dict[str, Any]:
    """Extend the lease if the caller holds it: `expected` must be the exact last value (or
    NO_HEARTBEAT for the first beat). Not compared once the item is stopping or stopped."""
    if desired_ttl is not None and not 1 <= desired_ttl <= 3600:
        raise bad_request(f"desired_ttl_seconds: must be between 1 and 3600, got {desired_ttl}.")
    while True:
        item.refresh_from_db()
        if item.state in (WorkState.STOPPING, WorkState.STOPPED):
            return {
                "type": "work_heartbeat",
                "last_heartbeat": item.last_heartbeat,
                "lease_extended": False,
                "state": item.state,
                "ttl_seconds": item.ttl_seconds or settings.GALLEY_WORK_LEASE_SECONDS,
            }
        if generation is not None and generation != item.generation:
            raise _precondition_failed(item, f"work item {item.pk!r} was handed to another worker.")
        if item.state == WorkState.QUEUED:
            raise _precondition_failed(item, f"work item {item.pk!r} is queued; no worker holds its lease.")
        current = item.last_heartbeat or NO_HEARTBEAT
        if expected is not None and expected != current:
            raise _precondition_failed(
                item,
                f"expected_last_heartbeat: {expected!r} does not match the lease's last heartbeat "
                f"{current!r}; another worker may hold it.",
            )
        now = timezone.now()
        if _never_used(item, now):
            # Nobody has sent the session anything since its worker took it: let the worker go
            # (the SDK's worker serves one session at a time); the first input enqueues new work.
            WorkItem.objects.filter(pk=item.pk, generation=item.generation, state=item.state).update(
                state=WorkState.STOPPING, stop_requested_at=now
            )
            continue
        ttl = desired_ttl or int(settings.GALLEY_WORK_LEASE_SECONDS)
        stamp = _stamp(now)
        # Conditional UPDATE on the value we compared: of two beats racing with the same expected
        # value, one extends the lease and the other loops and gets its 412.
        extended = WorkItem.objects.filter(
            pk=item.pk, generation=item.generation, state=item.state, last_heartbeat=item.last_heartbeat
        ).update(
            state=WorkState.ACTIVE,
            started_at=item.started_at or now,
            last_heartbeat=stamp,
            latest_heartbeat_at=now,
            lease_expires_at=now + timedelta(seconds=ttl),
            ttl_seconds=ttl,
        )
        if extended == 1:
            return {
                "type": "work_heartbeat",
                "last_heartbeat": stamp,
                "lease_extended": True,
                "state": WorkState.ACTIVE,
                "ttl_seconds": ttl,
            }


def _never_used(item: WorkItem, now: datetime) -> bool:
    from sessions.models import Session

    if item.started_at is None or now - item.started_at < timedelta(
        seconds=settings.GALLEY_WORK_UNUSED_SECONDS
    ):
        return False
    return Session.objects.filter(pk=item.session_id, last_seq=0).exists()


def work_stop(*, item: WorkItem, force: bool, generation: int | None = None) -> WorkItem:
    while True:
        item.refresh_from_db()
        if generation is not None and generation != item.generation:
            raise conflict(f"work item {item.pk!r} was handed to another worker; this token cannot stop it.")
        if item.state == WorkState.STOPPED:
            raise conflict(f"work item {item.pk!r} is already stopped.", error_code="work_already_stopped")
        now = timezone.now()
        if item.state == WorkState.STOPPING and not force:
            return item
        # A graceful stop of a running item asks its worker to wind down (its next heartbeat says
        # stopping); anything else stops at once.
        graceful = not force and item.state == WorkState.ACTIVE
        fields: dict[str, Any] = {"stop_requested_at": item.stop_requested_at or now}
        if graceful:
            fields["state"] = WorkState.STOPPING
        else:
            fields.update(state=WorkState.STOPPED, stopped_at=now, token_hash="")
        done = WorkItem.objects.filter(pk=item.pk, generation=item.generation, state=item.state).update(
            **fields
        )
        if done == 1:
            item.refresh_from_db()
            return item


def work_update(*, item: WorkItem, body: dict[str, Any]) -> WorkItem:
    unknown = sorted(set(body) - {"metadata"})
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field.")
    if "metadata" not in body:
        raise bad_request("metadata: field required.")
    patch = body["metadata"]
    if patch is not None and not isinstance(patch, dict):
        raise bad_request("metadata: expected an object.", error_code="invalid_metadata")
    if isinstance(patch, dict):
        for key, value in patch.items():
            if value is not None and not isinstance(value, str):
                raise bad_request(
                    f"metadata.{key}: values must be strings or null.", error_code="invalid_metadata"
                )
    with transaction.atomic():
        locked = WorkItem.objects.select_for_update().get(pk=item.pk)
        try:
            locked.metadata = patch_metadata(locked.metadata, patch)
        except ApiError as exc:
            exc.details.setdefault("error_code", "invalid_metadata")
            raise
        locked.save(update_fields=["metadata"])
    return locked


def work_list(*, environment: Environment, limit: int | None, page: str | None) -> Page:
    return paginate(
        WorkItem.objects.filter(environment=environment),
        fields=("created_at", "id"),
        limit=check_limit(limit, default=20, maximum=100),
        order="desc",
        page=page,
    )


def work_stats(*, environment: Environment) -> dict[str, Any]:
    now = timezone.now()
    _finish_abandoned(environment.pk, now)
    queued = WorkItem.objects.filter(environment=environment, state=WorkState.QUEUED)
    pending_since = now - timedelta(milliseconds=DEFAULT_RECLAIM_MS)
    pending = queued.filter(polled_at__gte=pending_since).count()
    total = queued.count()
    oldest = queued.aggregate(at=Min("created_at"))["at"]
    polling = WorkerPoll.objects.filter(
        environment=environment, last_polled_at__gte=now - WORKERS_POLLING_WINDOW
    ).count()
    return {
        "type": "work_queue_stats",
        "depth": total - pending,
        "pending": pending,
        "oldest_queued_at": iso(oldest),
        "workers_polling": polling,
    }


def workers_recent(*, environment: Environment, limit: int = 50) -> list[WorkerPoll]:
    return list(WorkerPoll.objects.filter(environment=environment).order_by("-last_polled_at")[:limit])


def work_wire(item: WorkItem, *, secret: str | None = None) -> dict[str, Any]:
    return {
        "id": item.pk,
        "type": "work",
        "environment_id": item.environment_id,
        "data": {"type": item.kind, "id": item.session_id or item.pk},
        "state": item.state,
        "secret": secret,
        "metadata": item.metadata,
        "created_at": iso(item.created_at),
        "acknowledged_at": iso(item.acknowledged_at),
        "started_at": iso(item.started_at),
        "latest_heartbeat_at": iso(item.latest_heartbeat_at),
        "stop_requested_at": iso(item.stop_requested_at),
        "stopped_at": iso(item.stopped_at),
    }
