"""Rate limits (spec 1.13): requests per API key and per workspace, and failed sign-ins per client address.

Each limit is a token bucket of `per_minute` tokens refilled at `per_minute / 60` per second, so a client can
spend a minute's allowance at once and then gets one request every 60 / per_minute seconds. A request over
the limit is told how long to wait (`retry-after`). Counters live in Redis when REDIS_URL is set (shared by
every web process; the bucket is updated in one script, so concurrent requests never overspend) and otherwise
in a small SQLite file of the data dir, `ratelimit.sqlite3` (shared by the web processes of one `serve
--web-workers N`; each bucket is read and written in one write transaction, so they never overspend either).

Create routes (a POST to a collection: `/v1/agents`, `/v1/vaults/{id}/credentials`, ...) get
GALLEY_RATE_LIMIT_CREATE_PER_MINUTE; every other call, reads and streams included, gets
GALLEY_RATE_LIMIT_READ_PER_MINUTE. A limit of 0 is no limit.
"""

import logging
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from galley.datafiles import private_file

log = logging.getLogger(__name__)

# POSTs ending in these act on a resource or send to it rather than create one: they are "other" calls.
_NOT_CREATES = {
    "events",
    "archive",
    "cancel",
    "ack",
    "heartbeat",
    "stop",
    "redact",
    "pause",
    "unpause",
    "run",
    "mcp_oauth_validate",
    "reveal_token",
    "rotate_token",
    "enrollment_url",
    "action_urls",
}

_BUCKET_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'ts', 'tokens')
local ts = tonumber(state[1]) or now
local tokens = tonumber(state[2]) or burst
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local need = math.max(cost, 1)
local allowed = 0
local wait = 0
if tokens >= need then
  tokens = tokens - cost
  allowed = 1
else
  wait = (need - tokens) / rate
end
redis.call('HSET', KEYS[1], 'ts', tostring(now), 'tokens', tostring(tokens))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: float  # seconds until the request would be allowed; 0 when allowed


class FileBuckets:
    """Token buckets in a SQLite file (WAL, no fsync: counters need no durability). One connection per
    process, used under a lock by its threads; SQLite's own file lock orders the processes."""

    PRUNE_SECONDS = 60.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._last_prune = 0.0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            private_file(self.path)  # 0600 like every data file; SQLite gives its journals the same mode
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS bucket"
                " (key TEXT PRIMARY KEY, ts REAL NOT NULL, tokens REAL NOT NULL) WITHOUT ROWID"
            )
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def take(self, key: str, *, per_minute: int, cost: int) -> Verdict:
        rate, burst = per_minute / 60.0, float(per_minute)
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")  # the read and the write below are one step for every process
            try:
                # Wall-clock time, comparable between processes and across restarts; a clock set back only
                # delays the refill by as much.
                now = time.time()
                row = conn.execute("SELECT ts, tokens FROM bucket WHERE key = ?", (key,)).fetchone()
                ts, tokens = row if row is not None else (now, burst)
                tokens = min(burst, tokens + max(0.0, now - ts) * rate)
                need = max(cost, 1)
                if tokens >= need:
                    tokens -= cost
                    verdict = Verdict(True, 0.0)
                else:
                    verdict = Verdict(False, (need - tokens) / rate)
                conn.execute(
                    "INSERT INTO bucket (key, ts, tokens) VALUES (?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET ts = excluded.ts, tokens = excluded.tokens",
                    (key, now, tokens),
                )
                if now - self._last_prune > self.PRUNE_SECONDS:
                    # A bucket untouched for a minute is full again: forgetting it changes nothing.
                    self._last_prune = now
                    conn.execute("DELETE FROM bucket WHERE ts < ?", (now - self.PRUNE_SECONDS,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return verdict


class RedisBuckets:
    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url)
        self._script = self._client.register_script(_BUCKET_SCRIPT)

    def take(self, key: str, *, per_minute: int, cost: int) -> Verdict:
        allowed, wait = self._script(keys=[key], args=[per_minute / 60.0, per_minute, cost])
        return Verdict(bool(int(allowed)), float(wait))


_files: dict[Path, FileBuckets] = {}
_redis: dict[str, RedisBuckets] = {}


def buckets() -> Any:
    if not settings.REDIS_URL:
        path = Path(settings.DATA_DIR) / "ratelimit.sqlite3"
        embedded = _files.get(path)
        if embedded is None:
            embedded = _files[path] = FileBuckets(path)
        return embedded
    store = _redis.get(settings.REDIS_URL)
    if store is None:
        store = _redis[settings.REDIS_URL] = RedisBuckets(settings.REDIS_URL)
    return store


def _take(scope: str, ident: str, *, per_minute: int, cost: int = 1) -> Verdict:
    if per_minute <= 0:
        return Verdict(True, 0.0)
    key = f"{settings.GALLEY_REDIS_PREFIX}:ratelimit:{scope}:{ident}"
    try:
        return buckets().take(key, per_minute=per_minute, cost=cost)
    except Exception:  # Redis down: serving beats limiting, and the failure is logged
        log.warning("rate limit counter unavailable; request allowed", exc_info=True)
        return Verdict(True, 0.0)


def route_class(request: HttpRequest) -> str:
    """'create' for a POST to a collection, else 'read' (every other call: reads, streams, updates,
    actions such as archive, and sending events)."""
    if request.method != "POST":
        return "read"
    parts = [p for p in request.path.split("/") if p][1:]  # after "v1"
    if len(parts) % 2 == 1 and parts[-1] not in _NOT_CREATES:
        return "create"
    return "read"


def api_request_verdict(request: HttpRequest, *, key_id: str, workspace_id: str) -> Verdict:
    """Charge one request to the key's and the workspace's bucket for its route class."""
    kind = route_class(request)
    if kind == "create":
        key_limit = settings.GALLEY_RATE_LIMIT_CREATE_PER_MINUTE
        workspace_limit = settings.GALLEY_RATE_LIMIT_WORKSPACE_CREATE_PER_MINUTE
    else:
        key_limit = settings.GALLEY_RATE_LIMIT_READ_PER_MINUTE
        workspace_limit = settings.GALLEY_RATE_LIMIT_WORKSPACE_READ_PER_MINUTE
    verdict = _take(f"key-{kind}", key_id, per_minute=key_limit)
    if not verdict.allowed:
        return verdict
    return _take(f"workspace-{kind}", workspace_id, per_minute=workspace_limit)


def client_address(request: HttpRequest) -> str:
    # Daphne runs with --proxy-headers: behind the reverse proxy this is the client's own address.
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def auth_failure_check(request: HttpRequest) -> Verdict:
    """Whether this address may try to authenticate now (spends nothing)."""
    per_minute = settings.GALLEY_AUTH_FAILURES_PER_MINUTE
    return _take("auth-failures", client_address(request), per_minute=per_minute, cost=0)


def auth_failure_record(request: HttpRequest) -> None:
    per_minute = settings.GALLEY_AUTH_FAILURES_PER_MINUTE
    _take("auth-failures", client_address(request), per_minute=per_minute, cost=1)


def retry_after_headers(verdict: Verdict) -> dict[str, str]:
    return {
        "retry-after": str(max(1, math.ceil(verdict.retry_after))),
        "retry-after-ms": str(max(1, math.ceil(verdict.retry_after * 1000))),
    }
