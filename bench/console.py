"""Console page timings on the embedded defaults (SQLite in a temp data dir).

Seeds one session with 10,000 events and 100,000 more events across 1,000 sessions, then times
the pages server-side with Django's test client (median of several runs, after one warm-up).
Run alone with `python -m bench.console`; `make bench` runs it with the other benchmarks."""

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BIG_SESSION_EVENTS = 10_000
SPREAD_SESSIONS = 1_000
SPREAD_EVENTS_PER_SESSION = 100
RUNS = 5


def _setup_django(data_dir: str) -> None:
    os.environ["GALLEY_DATA_DIR"] = data_dir
    os.environ["DATABASE_URL"] = f"sqlite:///{data_dir}/galley.sqlite3"
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "galley.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def _turn(index: int, start_id: str) -> list[tuple[str, dict[str, Any]]]:
    usage = {
        "input_tokens": 1200,
        "output_tokens": 150,
        "cache_read_input_tokens": 800,
        "cache_creation_input_tokens": 0,
    }
    return [
        ("user.message", {"content": [{"type": "text", "text": f"Question {index}"}]}),
        ("session.status_running", {}),
        ("span.model_request_start", {}),
        ("agent.message", {"content": [{"type": "text", "text": f"Answer {index} " + "lorem ipsum " * 20}]}),
        (
            "agent.tool_use",
            {"name": "bash", "input": {"command": f"echo {index}"}, "evaluated_permission": "allow"},
        ),
        (
            "agent.tool_result",
            {"tool_use_id": "x", "content": [{"type": "text", "text": str(index)}], "is_error": False},
        ),
        (
            "span.model_request_end",
            {"model_request_start_id": start_id, "is_error": False, "model_usage": usage},
        ),
        ("agent.message", {"content": [{"type": "text", "text": "Done."}]}),
        ("session.status_idle", {"stop_reason": {"type": "end_turn"}}),
        ("span.model_request_start", {}),
    ]


def _seed() -> tuple[str, Any]:
    import datetime as dt

    from django.utils import timezone

    from accounts.models import Role
    from accounts.services import user_create, workspace_get_default
    from agents.models import Agent, AgentVersion, Environment
    from api.ids import new_id
    from sessions.models import Event, Session

    workspace = workspace_get_default()
    user = user_create(username="bench", password="bench-password-1", role=Role.VIEWER, workspace=workspace)
    agents = []
    for i, model in enumerate(["claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-8"]):
        agent = Agent.objects.create(id=new_id("agent"), workspace=workspace, name=f"Agent {i}")
        AgentVersion.objects.create(
            agent=agent,
            version=1,
            definition={
                "name": agent.name,
                "model": {"id": model},
                "tools": [],
                "mcp_servers": [],
                "skills": [],
                "system": "Be brief.",
                "description": None,
                "multiagent": None,
                "metadata": {},
            },
        )
        agents.append(agent)
    env = Environment.objects.create(
        id=new_id("env"),
        workspace=workspace,
        name="bench",
        config={"type": "cloud", "networking": {"type": "unrestricted"}},
    )
    now = timezone.now()

    def session(agent: Agent, created: dt.datetime, events: int) -> Session:
        return Session(
            id=new_id("sesn"),
            workspace=workspace,
            agent=agent,
            agent_version=1,
            agent_snapshot=agent.latest().snapshot(),
            environment=env,
            title=None,
            created_at=created,
            input_tokens=events * 120,
            output_tokens=events * 15,
            cache_read_input_tokens=events * 80,
            token_cost_micros=events * 600,
            active_seconds=events * 0.5,
            last_seq=events,
            status="idle",
        )

    def events_for(s: Session, count: int) -> list[Event]:
        rows: list[Event] = []
        start_id = ""
        seq = 0
        while seq < count:
            for type_, payload in _turn(seq, start_id):
                if seq >= count:
                    break
                seq += 1
                event_id = new_id("sevt")
                if type_ == "span.model_request_start":
                    start_id = event_id
                rows.append(
                    Event(
                        id=event_id,
                        session=s,
                        seq=seq,
                        type=type_,
                        payload=payload,
                        processed_at=s.created_at,
                        created_at=s.created_at + dt.timedelta(milliseconds=seq),
                    )
                )
        return rows

    big = session(agents[0], now, BIG_SESSION_EVENTS)
    big.save(force_insert=True)
    Event.objects.bulk_create(events_for(big, BIG_SESSION_EVENTS), batch_size=2000)
    spread = [
        session(agents[i % 3], now - dt.timedelta(minutes=43 * i), SPREAD_EVENTS_PER_SESSION)
        for i in range(SPREAD_SESSIONS)
    ]
    Session.objects.bulk_create(spread, batch_size=500)
    batch: list[Event] = []
    for s in spread:
        batch.extend(events_for(s, SPREAD_EVENTS_PER_SESSION))
        if len(batch) >= 10_000:
            Event.objects.bulk_create(batch, batch_size=2000)
            batch = []
    Event.objects.bulk_create(batch, batch_size=2000)
    return big.pk, user


GZIP = {"HTTP_ACCEPT_ENCODING": "gzip"}


def _uncached(call: Callable[[], Any]) -> Any:
    from django.core.cache import cache

    cache.clear()
    return call()


def _log_moves(session_id: str) -> None:
    """One more event in the session's log, as the harness would append it: the trace it had is
    no longer the trace, so the next load builds it again."""
    from django.utils import timezone

    from api.ids import new_id
    from sessions.models import Event, Session

    session = Session.objects.get(pk=session_id)
    session.last_seq += 1
    Event.objects.create(
        id=new_id("sevt"),
        session=session,
        seq=session.last_seq,
        type="agent.message",
        payload={"content": [{"type": "text", "text": "One more."}]},
        processed_at=timezone.now(),
    )
    Session.objects.filter(pk=session_id).update(last_seq=session.last_seq)


def _delta_time(client: Any, session_id: str) -> float:
    """A running session's live trace page: one event appended, then the poll for what is new
    (`trace/data.json?after=<the seq it had>`), served from the state the previous read left."""
    import gzip

    from sessions.models import Session

    status = Session.objects.filter(pk=session_id).values_list("status", flat=True).get()
    Session.objects.filter(pk=session_id).update(status="running")
    url = f"/sessions/{session_id}/trace/data.json"

    def body(response: Any) -> Any:
        raw = response.content
        return json.loads(gzip.decompress(raw) if response.get("Content-Encoding") == "gzip" else raw)

    last = body(client.get(url, **GZIP))["last_seq"]
    samples = []
    try:
        for _ in range(RUNS + 1):  # the first is a warm-up
            _log_moves(session_id)
            started = time.perf_counter()
            response = client.get(f"{url}?after={last}", **GZIP)
            samples.append(time.perf_counter() - started)
            delta = body(response)
            assert delta.get("after") == last, "the poll was not served as a delta"
            last = delta["last_seq"]
    finally:
        Session.objects.filter(pk=session_id).update(status=status)
    return statistics.median(samples[1:])


def _time(call: Callable[[], Any]) -> float:
    call()  # warm-up: template loading, first queries
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        response = call()
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200, response.status_code
    return statistics.median(samples)


def run() -> list[tuple[str, float]]:
    from django.test import Client

    seed_started = time.perf_counter()
    big_id, user = _seed()
    seeded = time.perf_counter() - seed_started
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    results = [
        ("seed 110,000 events (not a page)", seeded),
        ("session page, 10,000 events", _time(lambda: client.get(f"/sessions/{big_id}"))),
        ("trace replay page, 10,000 events", _time(lambda: client.get(f"/sessions/{big_id}/trace"))),
        (
            "trace replay data, one page of 2,000 events",
            _time(lambda: client.get(f"/sessions/{big_id}/trace.json")),
        ),
        (
            "trace tree (turns, roll-ups), all 10,000 events",
            _time(lambda: client.get(f"/sessions/{big_id}/trace/tree.json")),
        ),
        (
            "trace page data (tree + replay rows, compact, gzip), built",
            _time(lambda: _uncached(lambda: client.get(f"/sessions/{big_id}/trace/data.json", **GZIP))),
        ),
        (
            "trace page data, from the cache",
            _time(lambda: client.get(f"/sessions/{big_id}/trace/data.json", **GZIP)),
        ),
        (
            "trace page data, a running session's poll after one new event (delta)",
            _delta_time(client, big_id),
        ),
        (
            "trace JSON export, all 10,000 events",
            _time(lambda: client.get(f"/sessions/{big_id}/trace.json?download=1")),
        ),
        (
            "analytics by day, 1,001 sessions / 110,000 events",
            _time(lambda: client.get("/analytics?group=day")),
        ),
        ("analytics by model", _time(lambda: client.get("/analytics?group=model"))),
        ("analytics CSV by agent", _time(lambda: client.get("/analytics.csv?group=agent"))),
        ("overview", _time(lambda: client.get("/"))),
        ("sessions list, page 1", _time(lambda: client.get("/sessions"))),
    ]
    return results


def browser_times(data_dir: str, big_id: str) -> list[tuple[str, float]]:
    """Time to interactive in headless Chromium against a live server (Daphne) on the same data: from
    navigation start until the page is usable (the session page live, the trace's tree and replay
    rendered). Median of RUNS loads after one warm-up. Empty when Chromium or Playwright is missing."""
    import shutil
    import signal
    import socket
    import subprocess
    import urllib.request

    if not Path("/usr/bin/chromium").exists() or shutil.which("chromium") is None:
        print("  (no Chromium: time to interactive not measured)")
        return []
    from playwright.sync_api import sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, GALLEY_DATA_DIR=data_dir, DATABASE_URL=f"sqlite:///{data_dir}/galley.sqlite3")
    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/login", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
            )
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(base + "/login")
            page.get_by_label("Username").fill("bench")
            page.get_by_label("Password").fill("bench-password-1")
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(base + "/")
            trace_ready = (
                "document.getElementById('trace-total-tokens') !== null && "
                "document.getElementById('trace-pos').textContent.startsWith('Event ')"
            )
            pages = [
                (
                    "session page",
                    f"/sessions/{big_id}",
                    "document.querySelectorAll('#chat .msg').length > 0",
                    None,
                ),
                (
                    "trace page (tree, timeline, replay), trace cached",
                    f"/sessions/{big_id}/trace",
                    trace_ready,
                    None,
                ),
                (
                    "trace page, the log moved before each load (trace built)",
                    f"/sessions/{big_id}/trace",
                    trace_ready,
                    lambda: _log_moves(big_id),
                ),
            ]
            out = []
            for name, url, condition, before in pages:
                samples = []
                for run in range(RUNS + 1):
                    if before is not None:
                        # Playwright's loop runs in this thread; Django's ORM refuses it.
                        with ThreadPoolExecutor(1) as pool:
                            pool.submit(before).result()
                    page.goto(base + url, wait_until="commit")
                    page.wait_for_function(condition)
                    elapsed = page.evaluate("performance.now()")  # since this navigation started
                    if run:
                        samples.append(elapsed / 1000)
                out.append(
                    (f"{name}, 10,000 events, time to interactive in Chromium", statistics.median(samples))
                )
            browser.close()
        return out
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="galley-bench-console-") as tmp:
        _setup_django(tmp)
        results = run()
        from sessions.models import Session

        big_id = Session.objects.order_by("-last_seq").values_list("id", flat=True).first()
        from django.db import connections

        connections.close_all()
        results += browser_times(tmp, str(big_id))
    print(f"Console (server time and Chromium time to interactive, median of {RUNS} runs, SQLite)")
    for name, seconds in results:
        print(f"  {name:<75} {seconds * 1000:9.1f} ms")
    out = Path(__file__).resolve().parent.parent / "var" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "console.json").write_text(
        json.dumps(
            {"runs": RUNS, "ms": {name: round(seconds * 1000, 1) for name, seconds in results}}, indent=2
        )
    )
    slow = [name for name, seconds in results[1:] if seconds >= 1.0]
    if slow:
        print("  over 1 s: " + ", ".join(slow))
        sys.exit(1)


if __name__ == "__main__":
    main()
