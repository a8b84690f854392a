"""A burst of concurrent events.send on PostgreSQL and Redis (issue 8, item 2), through the official SDK
against a live server (`manage.py serve`: Daphne and a Celery worker of 256 threads) whose database role
PostgreSQL lets open only ROLE_LIMIT connections, far fewer than the threads that want one.

Figures: the baseline (one session at a time: send latency and send -> session.status_idle), then N
sessions sent at once: send latency p50 / p99 / max, non-2xx answers, time until every session is idle,
whether every log is exact, and the most connections the server held. Needs DATABASE_URL=postgres://...
(and REDIS_URL for the production broker); on SQLite it records why it did not run.
"""

import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "var" / "bench" / "burst.json"
EXPECTED = [
    "user.message",
    "session.status_running",
    "span.model_request_start",
    "agent.message",
    "span.model_request_end",
    "session.status_idle",
]
POOL = 8  # connections per process (web, worker)
ROLE_LIMIT = 2 * POOL + 4


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _send(client: Any, session_id: str) -> tuple[float, str | None]:
    started = time.monotonic()
    try:
        client.beta.sessions.events.send(
            session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": "hello"}]}]
        )
    except Exception as exc:  # max_retries=0: any 4xx/5xx or connection error is a failure
        return time.monotonic() - started, f"{type(exc).__name__}: {getattr(exc, 'status_code', '')}"
    return time.monotonic() - started, None


def _wait_idle(client: Any, ids: list[str], timeout: float) -> float:
    started = time.monotonic()
    pending = set(ids)
    while pending and time.monotonic() - started < timeout:
        for page in client.beta.sessions.list(limit=100).iter_pages():
            for session in page.data:
                if session.id in pending and session.status == "idle":
                    pending.discard(session.id)
        if pending:
            time.sleep(0.5 if len(pending) > 10 else 0.02)
    if pending:
        raise RuntimeError(f"{len(pending)} sessions did not finish in {timeout} s")
    return time.monotonic() - started


def run(count: int) -> dict[str, Any]:
    import anthropic
    import httpx2
    import psycopg

    from tests.live import live_galley
    from tests.model_server import scripted_model

    admin_url = os.environ["DATABASE_URL"]
    env = {"GALLEY_DB_POOL_MAX_SIZE": str(POOL), "GALLEY_DB_POOL_TIMEOUT": "300"}
    with (
        scripted_model() as model,
        live_galley(
            {**env, "ANTHROPIC_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": model.base_url},
            db_connection_limit=ROLE_LIMIT,
        ) as galley,
    ):
        role = galley.env["DATABASE_URL"].split("//", 1)[1].split("@", 1)[0]
        client = anthropic.Anthropic(
            base_url=galley.base_url,
            api_key=galley.api_key,
            max_retries=0,
            timeout=600,
            http_client=anthropic.DefaultHttpxClient(limits=httpx2.Limits(max_connections=count + 10)),
        )
        agent = client.beta.agents.create(name="burst", model="claude-sonnet-4-6")
        environment = client.beta.environments.create(name="burst-env")

        def create(_: int) -> str:
            return client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id

        # Baseline: one session at a time on the same server.
        baseline_send, baseline_turn = [], []
        for session_id in [create(i) for i in range(20)]:
            started = time.monotonic()
            latency, failure = _send(client, session_id)
            assert failure is None, failure
            _wait_idle(client, [session_id], 60)
            baseline_send.append(latency)
            baseline_turn.append(time.monotonic() - started)

        with ThreadPoolExecutor(32) as pool:
            ids = list(pool.map(create, range(count)))
        peak = [0]
        done = threading.Event()

        def watch() -> None:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                while not done.is_set():
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)
                    ).fetchone()
                    peak[0] = max(peak[0], int(row[0]) if row else 0)
                    time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        barrier = threading.Barrier(count)

        def burst(session_id: str) -> tuple[float, str | None]:
            barrier.wait()
            return _send(client, session_id)

        started = time.monotonic()
        with ThreadPoolExecutor(count) as pool:
            outcomes = list(pool.map(burst, ids))
        sent = time.monotonic() - started
        all_idle = _wait_idle(client, ids, 900) + sent
        done.set()
        watcher.join()
        wrong = 0
        for session_id in ids:
            types = [e.type for e in client.beta.sessions.events.list(session_id, limit=100)]
            wrong += types != EXPECTED
        latencies = [latency for latency, _ in outcomes]
        failures = [failure for _, failure in outcomes if failure]
        log = (galley.data_dir / "serve.log").read_text(errors="replace")
    return {
        "sessions": count,
        "database": "postgresql",
        "broker": "redis" if os.environ.get("REDIS_URL") else "filesystem",
        "pool_per_process": POOL,
        "role_connection_limit": ROLE_LIMIT,
        "baseline_send_ms_p50": _ms(statistics.median(baseline_send)),
        "baseline_turn_ms_p50": _ms(statistics.median(baseline_turn)),
        "burst_send_ms_p50": _ms(_pct(latencies, 0.5)),
        "burst_send_ms_p99": _ms(_pct(latencies, 0.99)),
        "burst_send_ms_max": _ms(max(latencies)),
        "burst_failures": len(failures),
        "burst_failure_kinds": sorted(set(failures))[:5],
        "seconds_until_all_idle": round(all_idle, 1),
        "sessions_with_a_wrong_log": wrong,
        "peak_server_connections": peak[0],
        "too_many_connections_in_log": "too many connections" in log,
        "measured_at": datetime.now().isoformat(timespec="seconds"),
    }


def main() -> None:
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        results: dict[str, Any] = {"skipped": "needs DATABASE_URL=postgres://... (and REDIS_URL)"}
    else:
        results = run(int(os.environ.get("GALLEY_BENCH_BURST_N", "1000")))
    RESULT.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
