"""Harness benchmarks (issue 3), on the embedded defaults unless DATABASE_URL / REDIS_URL say
otherwise. A scripted Messages-API server stands in for the model, at zero latency and at 1 s per
answer; a real Celery worker process (threads pool) runs the harness.

Figures:
- overhead per model call: turn time (the step taking the user message -> session.status_idle)
  minus the model's time (measured by the model server) and tool time, divided by model calls;
- first event: events.send (commit + kick) -> the first event the harness appends;
- the same loop without the platform (same anthropic client and tool adapter, one process);
- sessions one worker process keeps running at once with the 1 s model, and that none lost events.
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "var" / "bench" / "harness.json"
EXPECTED = [
    "user.message",
    "session.status_running",
    "span.model_request_start",
    "agent.message",
    "agent.tool_use",
    "agent.tool_result",  # the refusal is recorded with the call
    "span.model_request_end",
    "span.model_request_start",
    "agent.message",
    "span.model_request_end",
    "session.status_idle",
]


ROUNDS = 3  # tool rounds per session in the concurrency run (ROUNDS + 1 model calls of 1 s)
EXPECTED_ROUNDS = EXPECTED[:3] + (EXPECTED[3:7] + ["span.model_request_start"]) * ROUNDS + EXPECTED[-3:]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _setup(stack: ExitStack) -> dict[str, str]:
    data_dir = Path(tempfile.mkdtemp(prefix="galley-bench-"))
    if os.environ.get("GALLEY_BENCH_KEEP") != "1":
        stack.callback(shutil.rmtree, data_dir, True)
    print(f"bench data dir: {data_dir}", flush=True)
    os.environ["GALLEY_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    os.environ["GALLEY_REDIS_PREFIX"] = f"galley-bench-{os.getpid()}"
    if os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        from tests.live import _database

        os.environ["DATABASE_URL"] = stack.enter_context(_database(data_dir))
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{data_dir / 'galley.sqlite3'}"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return dict(os.environ)


def _start_worker(stack: ExitStack, env: dict[str, str], model_url: str) -> None:
    from django.conf import settings

    from console.celery import worker_argv

    log = open(Path(settings.DATA_DIR) / "worker.log", "wb")
    stack.callback(log.close)
    worker_env = {
        **env,
        "ANTHROPIC_API_KEY": "sk-bench",
        "ANTHROPIC_BASE_URL": model_url,
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        worker_argv(
            concurrency=settings.GALLEY_WORKER_CONCURRENCY, schedule=str(Path(settings.DATA_DIR) / "beat")
        ),
        cwd=ROOT,
        env=worker_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    stack.callback(stop)
    global WORKER_PID
    WORKER_PID = proc.pid
    # The worker is ready when it runs a step: kick a session and wait for it to idle.
    from sessions.harness.dispatch import session_kick
    from tests.harness_helpers import make_session, say

    session = make_session()
    say(session, "warm up")
    session_kick(session.pk)
    _wait_idle([session.pk], timeout=60)


WORKER_PID = 0


def _worker_cpu_seconds() -> float:
    """User + system CPU of the worker process (from /proc; Linux)."""
    try:
        fields = Path(f"/proc/{WORKER_PID}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_idle(session_ids: list[str], timeout: float) -> float:
    from sessions.models import Session

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        busy = Session.objects.filter(pk__in=session_ids).exclude(status="idle").count()
        if busy == 0:
            return time.monotonic() - started
        time.sleep(0.02 if len(session_ids) == 1 else 0.05)
    raise RuntimeError(f"{busy} sessions did not reach idle in {timeout}s")


# A tool the agent does not have: the harness records the call and answers it with a refusal
# at once, so the loop runs its full tool path (tool_use, tool_result, next model call) without a
# sandbox. Sandbox costs are bench/sandbox.py's subject.
BENCH_TOOL = "lookup_notes"


def _responder(delay: float, rounds: int = 1) -> Any:
    """Answers with `rounds` tool calls (one per answer), then a closing message."""
    from tests.model_server import text, tool_call

    def respond(body: dict[str, Any]) -> Any:
        done = sum(1 for m in body["messages"] for b in m["content"] if b.get("type") == "tool_result")
        if done >= rounds:
            return text("The file is missing; nothing else to do.", delay=delay)
        return tool_call(BENCH_TOOL, {"topic": "notes"}, say="Looking it up.", delay=delay)

    return respond


def _platform_turns(model: Any, turns: int) -> dict[str, Any]:
    from sessions.harness.dispatch import session_kick
    from sessions.models import Event
    from tests.harness_helpers import TOOLSET_ALL, make_session, say

    overheads: list[float] = []
    first_events: list[float] = []
    for _ in range(turns):
        session = make_session(tools=[TOOLSET_ALL])
        before = len(model.timings)
        sent_wall = time.time()
        say(session, "Read notes.txt")
        session_kick(session.pk)
        _wait_idle([session.pk], timeout=60)
        events = {e.type: e for e in Event.objects.filter(session_id=session.pk).order_by("-seq")}
        user = Event.objects.get(session_id=session.pk, type="user.message")
        first = (
            Event.objects.filter(session_id=session.pk, type="span.model_request_start")
            .order_by("seq")
            .first()
        )
        assert first is not None and user.processed_at is not None
        turn = (events["session.status_idle"].created_at - user.processed_at).total_seconds()
        model_time = sum(end - start for start, end in model.timings[before:])
        calls = len(model.timings) - before
        tool_time = _tool_time(session.pk)
        overheads.append((turn - model_time - tool_time) / calls)
        first_events.append(first.created_at.timestamp() - sent_wall)
    return {"overhead_per_model_call_ms": _stats(overheads), "send_to_first_event_ms": _stats(first_events)}


def _tool_time(session_id: str) -> float:
    """Time from each answer's span end to its tool result (the bench's tool is refused at once,
    so this is the harness's own bookkeeping; a real tool's run would be here)."""
    from sessions.models import Event

    total = 0.0
    previous = None
    for event in Event.objects.filter(session_id=session_id).order_by("seq"):
        if event.type == "agent.tool_result" and previous is not None and previous.type != event.type:
            total += (event.created_at - previous.created_at).total_seconds()
        previous = event
    return total


def _baseline_turns(model: Any, turns: int) -> dict[str, Any]:
    """The same loop in one process: the same anthropic client and tool adapter, no platform."""
    from sessions.harness.providers.anthropic import AnthropicProvider
    from sessions.harness.providers.base import CancelToken, ModelRequest
    from sessions.harness.tools import TOOLSET

    class NoPreviews:
        def block_start(self, index: int, block_type: str) -> None:
            return None

        def text_delta(self, index: int, text: str) -> None:
            return None

    provider = AnthropicProvider(api_key="sk-bench", base_url=model.base_url)
    tools = [{"name": name, **spec} for name, spec in TOOLSET.items()]
    overheads: list[float] = []
    for _ in range(turns):
        before = len(model.timings)
        started = time.monotonic()
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "text", "text": "Read notes.txt"}]}
        ]
        while True:
            answer = provider.complete(
                ModelRequest("claude-sonnet-4-6", "You are terse.", tools, messages, 8192),
                listener=NoPreviews(),
                cancel=CancelToken(),
            )
            messages.append({"role": "assistant", "content": answer.blocks})
            uses = [b for b in answer.blocks if b["type"] == "tool_use"]
            if not uses:
                break
            results = [
                {
                    "type": "tool_result",
                    "tool_use_id": use["id"],
                    "content": [
                        {"type": "text", "text": f"Tool {use['name']!r} is not available in this session."}
                    ],
                    "is_error": True,
                }
                for use in uses
            ]
            messages.append({"role": "user", "content": results})
        turn = time.monotonic() - started
        model_time = sum(end - start for start, end in model.timings[before:])
        overheads.append((turn - model_time) / (len(model.timings) - before))
    return {"overhead_per_model_call_ms": _stats(overheads)}


def _stats(values: list[float]) -> dict[str, float]:
    return {"p50": _ms(statistics.median(values)), "p95": _ms(_pct(values, 0.95)), "n": len(values)}


def _concurrency(model: Any, count: int) -> dict[str, Any]:
    from django.db import connection, transaction

    from sessions.harness.dispatch import session_kick
    from sessions.models import Event, Session
    from sessions.services import NewEvent, events_append, session_set_status
    from tests.harness_helpers import TOOLSET_ALL, make_session

    sessions = [make_session(tools=[TOOLSET_ALL]) for _ in range(count)]
    with transaction.atomic():  # the users' messages, as events.send stores them
        for session in sessions:
            events_append(
                session=session,
                events=[
                    NewEvent(
                        "user.message",
                        {"content": [{"type": "text", "text": "Read notes.txt"}]},
                        processed=False,
                    )
                ],
            )
            session_set_status(session=session, status="running")
    model.max_in_flight = 0
    calls_before = len(model.timings)
    cpu_before = _worker_cpu_seconds()
    started = time.monotonic()
    for session in sessions:
        session_kick(session.pk)
    send_seconds = time.monotonic() - started
    ids = [s.pk for s in sessions]
    peak_running = 0
    samples: list[int] = []
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        running = Session.objects.filter(pk__in=ids, lease_owner__isnull=False).count()
        peak_running = max(peak_running, running)
        samples.append(model.in_flight)
        if not Session.objects.filter(pk__in=ids).exclude(status="idle").exists():
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    cpu = _worker_cpu_seconds() - cpu_before
    calls = len(model.timings) - calls_before
    intact = 0
    for session_id in ids:
        types = list(
            Event.objects.filter(session_id=session_id).order_by("seq").values_list("type", flat=True)
        )
        intact += types == EXPECTED_ROUNDS
    connection.close()
    return {
        "sessions": count,
        "send_all_seconds": round(send_seconds, 2),
        "all_idle_seconds": round(elapsed, 2),
        "peak_sessions_holding_a_step": peak_running,
        "peak_concurrent_model_requests": model.max_in_flight,
        "median_concurrent_model_requests": statistics.median(samples) if samples else 0,
        "model_calls_per_session": ROUNDS + 1,
        "sessions_with_exact_log": intact,
        "worker_cpu_ms_per_model_call": round(cpu * 1000 / max(1, calls), 2),
    }


def main() -> None:
    from tests.model_server import scripted_model

    quick = os.environ.get("GALLEY_BENCH_QUICK") == "1"
    results: dict[str, Any] = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "database": "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite",
        "broker": "redis" if os.environ.get("REDIS_URL") else "filesystem",
    }
    with ExitStack() as stack:
        env = _setup(stack)
        model = stack.enter_context(scripted_model(_responder(0.0)))
        _start_worker(stack, env, model.base_url)
        only = os.environ.get("GALLEY_BENCH_ONLY")
        if only == "concurrency":
            model.responder = _responder(1.0, ROUNDS)
            results["concurrency_one_second_model"] = _concurrency(
                model, int(os.environ.get("GALLEY_BENCH_N", "50"))
            )
            print(json.dumps(results, indent=2))
            return
        turns = 10 if quick else 40
        results["zero_latency"] = {
            "platform": _platform_turns(model, turns),
            "baseline": _baseline_turns(model, turns),
        }
        model.responder = _responder(1.0)
        slow_turns = 3 if quick else 8
        results["one_second_model"] = {
            "platform": _platform_turns(model, slow_turns),
            "baseline": _baseline_turns(model, slow_turns),
        }
        model.responder = _responder(1.0, ROUNDS)
        results["concurrency_one_second_model"] = _concurrency(model, 50 if quick else 250)
    for key in ("zero_latency", "one_second_model"):
        platform = results[key]["platform"]["overhead_per_model_call_ms"]["p50"]
        baseline = results[key]["baseline"]["overhead_per_model_call_ms"]["p50"]
        results[key]["overhead_ratio_p50"] = round(platform / baseline, 1) if baseline > 0 else None
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
