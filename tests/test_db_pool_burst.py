"""Bounded database connections (issue 8, item 2): a burst of concurrent events.send on PostgreSQL and
Redis, against a live server whose database role PostgreSQL lets open only a few connections. Every
process borrows from its pool and threads wait for a connection, so no request fails and every log is
exact. (SQLite has no connection limit: this suite needs DATABASE_URL to point at PostgreSQL.)"""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from tests.live import live_galley
from tests.model_server import scripted_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
        reason="connection limits are a PostgreSQL matter; run with DATABASE_URL=postgres://...",
    ),
]

SESSIONS = 200
POOL = 4  # per process: the web process and the worker process
ROLE_LIMIT = 2 * POOL + 2  # what PostgreSQL allows the server's role; far below 200 threads
EXPECTED = [
    "user.message",
    "session.status_running",
    "span.model_request_start",
    "agent.message",
    "span.model_request_end",
    "session.status_idle",
]


def _role_connections(admin_url: str, role: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)).fetchone()
    return int(row[0]) if row else 0


def test_a_burst_of_sends_waits_for_pooled_connections_and_loses_nothing() -> None:
    env = {
        "GALLEY_DB_POOL_MAX_SIZE": str(POOL),
        "GALLEY_DB_POOL_TIMEOUT": "120",
        "GALLEY_WORKER_CONCURRENCY": "256",
    }
    with (
        scripted_model() as model,
        live_galley(
            {**env, "ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": model.base_url},
            db_connection_limit=ROLE_LIMIT,
            serve_args=("--web-workers", "1"),  # the two processes ROLE_LIMIT is sized for
        ) as galley,
    ):
        url = galley.env["DATABASE_URL"]
        role = url.split("//", 1)[1].split("@", 1)[0]
        admin_url = os.environ["DATABASE_URL"]
        # The limit is real: one more connection than it allows is refused by PostgreSQL.
        held = []
        with pytest.raises(psycopg.OperationalError, match="too many connections"):
            for _ in range(ROLE_LIMIT + 1):
                held.append(psycopg.connect(url))
        for conn in held:
            conn.close()

        client = galley.client(timeout=300)
        agent = client.beta.agents.create(name="burst", model="claude-sonnet-4-6")
        environment = client.beta.environments.create(name="burst-env")
        with ThreadPoolExecutor(32) as pool:
            sessions = list(
                pool.map(
                    lambda _: client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id,
                    range(SESSIONS),
                )
            )

        peak = [0]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _role_connections(admin_url, role))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        barrier = threading.Barrier(SESSIONS)
        failures: list[Any] = []

        def send(session_id: str) -> None:
            barrier.wait()
            try:
                client.beta.sessions.events.send(
                    session_id,
                    events=[{"type": "user.message", "content": [{"type": "text", "text": "hello"}]}],
                )
            except Exception as exc:  # the SDK raises on any 4xx/5xx (max_retries=0)
                failures.append((session_id, repr(exc)))

        with ThreadPoolExecutor(SESSIONS) as pool:
            list(pool.map(send, sessions))
        assert failures == []

        deadline = time.monotonic() + 600
        pending = set(sessions)
        while pending and time.monotonic() < deadline:
            for session_id in list(pending):
                if client.beta.sessions.retrieve(session_id).status == "idle":
                    pending.discard(session_id)
            time.sleep(1)
        done.set()
        watcher.join()
        assert pending == set()
        for session_id in sessions:
            types = [event.type for event in client.beta.sessions.events.list(session_id, limit=100)]
            assert types == EXPECTED, (session_id, types)
        assert len(model.requests) == SESSIONS
        assert 0 < peak[0] <= ROLE_LIMIT
        log = (galley.data_dir / "serve.log").read_text(errors="replace")
        assert "too many connections" not in log and "Traceback" not in log, log[-4000:]


def test_open_streams_hold_no_pooled_connection() -> None:
    """An SSE stream is open for as long as its client listens. Django gives a request's connection
    back only when its response ends, so each idle stream used to hold one: POOL streams on the one web
    process held its whole pool and every other request waited for a connection (and failed after the
    pool timeout). Three times POOL streams are open here while the API still answers at once."""
    env = {"GALLEY_DB_POOL_MAX_SIZE": str(POOL), "GALLEY_DB_POOL_TIMEOUT": "5"}
    with (
        scripted_model() as model,
        live_galley(
            {**env, "ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": model.base_url},
            serve_args=("--web-workers", "1"),
        ) as galley,
    ):
        client = galley.client(max_retries=0, timeout=30)
        agent = client.beta.agents.create(name="streams", model="claude-sonnet-4-6")
        environment = client.beta.environments.create(name="streams")
        ids = [
            client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id
            for _ in range(3 * POOL)
        ]
        opened: list[threading.Event] = []
        streams: list[Any] = []

        def listen(session_id: str, ready: threading.Event) -> None:
            try:
                with client.beta.sessions.events.stream(session_id) as stream:
                    streams.append(stream)
                    ready.set()
                    for _ in stream:
                        pass
            except Exception:  # closed at the end of the test
                return

        for session_id in ids:
            ready = threading.Event()
            opened.append(ready)
            threading.Thread(target=listen, args=(session_id, ready), daemon=True).start()
        assert all(ready.wait(20) for ready in opened), "a stream did not open"
        time.sleep(1.5)  # past a heartbeat: every stream is waiting
        started = time.monotonic()
        for session_id in ids[:POOL]:
            client.beta.sessions.retrieve(session_id)
        created = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
        assert created.id.startswith("sesn_")
        assert time.monotonic() - started < 4, "requests waited for a pooled connection"
        for stream in streams:
            stream.close()
