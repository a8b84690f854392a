"""End-to-end benchmarks of the agent loop, as a client sees it: the official `anthropic` SDK against a
live Galley (`manage.py serve`: Daphne web processes and real Celery worker processes, from
tests/live.py) whose model is the scripted Messages-API server (tests/model_server.py). The same
scripted model is also called directly with the anthropic client in the same run: the bare-client
baseline.

Configurations (GALLEY_BENCH_CONFIGS, comma separated): `embedded-1` (SQLite, filesystem broker,
one worker process), `pg-1` and `pg-4` (PostgreSQL + Redis, one or four worker processes). The PG
configurations use GALLEY_BENCH_DATABASE_URL / GALLEY_BENCH_REDIS_URL (default: DATABASE_URL and
REDIS_URL, else the local servers) and are skipped, with a note in the results, when unreachable.

Figures per configuration (p50 / p95 unless said otherwise):
- text turn: `events.send` -> `session.status_idle` on a stream opened before, one model call;
- send -> model: `events.send` -> the scripted model receives the request (same host clock);
- tool turn: one `bash` call (`echo hi`) in the sandbox with the default networking, two model calls;
  its tool call as the client sees it: `agent.tool_use` read on the stream -> `agent.tool_result` read;
- cold first tool call: the same, in new sessions (the first tool call of each: its sandbox, volume and
  egress proxy start inside it unless the start the harness begins when it asks the model has finished),
  the stream opened before the send; once with the scripted model answering at once, once with its
  first byte after THINKING_SECONDS (a real model's time to its first byte is longer);
- burst of N sessions sent at once (N = 100 and 1,000) with a 1 s model: time for every
  `events.send` to be accepted, time until all are idle, server CPU (every process under serve),
  peak RSS of those processes, model requests in flight (peak, median), worker CPU per model call,
  and every log checked event by event through the SDK;
- 100 idle streams: server CPU while 100 SSE streams wait on idle sessions, in % of one core.
"""

import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anthropic  # noqa: E402

from tests.live import LiveGalley, live_galley  # noqa: E402
from tests.model_server import Reply, ScriptedModel, scripted_model, text, tool_call  # noqa: E402

RESULT = Path(os.environ.get("GALLEY_BENCH_RESULT") or ROOT / "var" / "bench" / "harness.json")
QUICK = os.environ.get("GALLEY_BENCH_QUICK") == "1"
MODEL = "claude-sonnet-4-6"
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- process accounting (Linux /proc) ------------------------------------------------------------
def _tree(root: int) -> dict[int, str]:
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        names[int(entry.name)] = cmd
    found = {root: names.get(root, "")}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found[pid] = names[pid]
                grew = True
    return found


def _cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total


class Server:
    """The live server's process tree: all of it, and its worker processes."""

    def __init__(self, live: LiveGalley) -> None:
        assert live.proc is not None
        self.root = live.proc.pid

    def pids(self) -> list[int]:
        return list(_tree(self.root))

    def worker_pids(self) -> list[int]:
        return [p for p, cmd in _tree(self.root).items() if " celery " in f" {cmd} "]

    def cpu(self) -> float:
        return _cpu(self.pids())

    def worker_cpu(self) -> float:
        return _cpu(self.worker_pids())


def _settle(server: Server, *, timeout: float = 90.0) -> float:
    """Waits until the server's processes have started (serve answers HTTP before every worker process is
    ready: four of them importing and starting take seconds of CPU on 2 cores, which would be counted in
    the first figures and slow their turns). Settled: under 5 % of a core over a second. Returns the wait."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = server.cpu()
        time.sleep(1.0)
        if server.cpu() - before < 0.05:
            break
    return round(time.monotonic() - started, 1)


@contextmanager
def _sampler(fn: Callable[[], None], every: float) -> Iterator[None]:
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            fn()
            stop.wait(every)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --- figures ---------------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _stats_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p95_ms": round(_pct(values, 0.95) * 1000, 2),
        "n": len(values),
    }


def _message(content: str) -> list[dict[str, Any]]:
    return [{"type": "user.message", "content": [{"type": "text", "text": content}]}]


# --- the bare client -------------------------------------------------------------------------------
def _bare_call(client: anthropic.Anthropic, messages: list[dict[str, Any]], tools: list[Any]) -> list[Any]:
    stream = client.messages.create(
        model=MODEL,
        max_tokens=1024,
        messages=messages,
        tools=tools,
        stream=True,  # type: ignore[arg-type]
    )
    blocks: list[Any] = []
    with stream:
        for event in stream:
            if event.type == "content_block_start":
                blocks.append(event.content_block.model_dump())
    return blocks


def _bare_text_turns(model: ScriptedModel, n: int) -> list[float]:
    client = anthropic.Anthropic(base_url=model.base_url, api_key="sk-bench", max_retries=0)
    out = []
    for i in range(n + 3):
        started = time.perf_counter()
        _bare_call(client, [{"role": "user", "content": "Hi"}], [])
        if i >= 3:
            out.append(time.perf_counter() - started)
    return out


BASH_TOOL = {
    "name": "bash",
    "description": "Run a command",
    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
}


def _bare_tool_turns(model: ScriptedModel, n: int) -> list[float]:
    """The same two model calls with the command run by the client itself (a new bash)."""
    client = anthropic.Anthropic(base_url=model.base_url, api_key="sk-bench", max_retries=0)
    out = []
    for i in range(n + 3):
        started = time.perf_counter()
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Say hi with bash"}]
        blocks = _bare_call(client, messages, [BASH_TOOL])
        use = next(b for b in blocks if b["type"] == "tool_use")
        result = subprocess.run(["bash", "-c", "echo hi"], capture_output=True, text=True)
        messages += [
            {"role": "assistant", "content": [{**use, "input": {"command": "echo hi"}}]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": result.stdout}],
            },
        ]
        _bare_call(client, messages, [BASH_TOOL])
        if i >= 3:
            out.append(time.perf_counter() - started)
    return out


# --- through Galley --------------------------------------------------------------------------------
def _reader(
    client: anthropic.Anthropic,
    session_id: str,
    out: "queue.Queue[tuple[str, float]]",
    ready: threading.Event,
) -> None:
    try:
        with client.beta.sessions.events.stream(session_id) as stream:
            ready.set()
            for event in stream:
                out.put((event.type, time.perf_counter()))
    except Exception:  # the server going away at the end of the run
        return


def _turns(
    client: anthropic.Anthropic, model: ScriptedModel, server: Server, session_id: str, n: int
) -> dict[str, Any]:
    """n turns on one session after 3 warm-up turns: send -> idle, send -> the model's request."""
    events: queue.Queue[tuple[str, float]] = queue.Queue()
    ready = threading.Event()
    threading.Thread(target=_reader, args=(client, session_id, events, ready), daemon=True).start()
    assert ready.wait(30), "the stream did not open"
    time.sleep(0.3)
    turns: list[float] = []
    to_model: list[float] = []
    tool_calls: list[float] = []
    calls = 0
    cpu_before = 0.0
    first_turn = 0.0
    for i in range(n + 3):
        if i == 3:
            cpu_before = server.worker_cpu()
            calls_before = len(model.timings)
        before = len(model.timings)
        sent = time.perf_counter()
        sent_mono = time.monotonic()
        client.beta.sessions.events.send(session_id, events=_message("Hi"))
        kind, at, tool_call = _until_idle(events)
        if i == 0:
            first_turn = at - sent  # this session's first turn (on a new server: the workers' first step)
        if i >= 3:
            turns.append(at - sent)
            if tool_call is not None:
                tool_calls.append(tool_call)
            first = min(start for start, _end in model.timings[before:])
            to_model.append(first - sent_mono)
    calls = len(model.timings) - calls_before
    cpu = server.worker_cpu() - cpu_before
    result = {
        "send_to_idle": _stats_ms(turns),
        "first_turn_ms": round(first_turn * 1000, 1),
        "send_to_model_request": _stats_ms(to_model),
        "model_calls": calls,
        "worker_cpu_ms_per_model_call": round(cpu * 1000 / max(1, calls), 2),
    }
    if tool_calls:
        result["tool_use_to_tool_result"] = _stats_ms(tool_calls)
    return result


def _until_idle(events: "queue.Queue[tuple[str, float]]") -> tuple[str, float, float | None]:
    """Reads the stream up to the turn's end: its kind and arrival, and the first tool call's time as the
    client saw it (`agent.tool_use` arrived -> its `agent.tool_result` arrived; None without one)."""
    used: float | None = None
    tool_call: float | None = None
    while True:
        kind, at = events.get(timeout=60)
        if kind == "agent.tool_use" and used is None:
            used = at
        elif kind == "agent.tool_result" and used is not None and tool_call is None:
            tool_call = at - used
        elif kind in ("session.status_idle", "session.status_terminated"):
            assert kind == "session.status_idle", kind
            return kind, at, tool_call


THINKING_SECONDS = 0.3


def _cold_tool_calls(client: anthropic.Anthropic, agent: str, environment: str, n: int) -> dict[str, Any]:
    """The first tool call of n new sessions, each with its stream opened before its one send."""
    calls: list[float] = []
    turns: list[float] = []
    for _ in range(n):
        session_id = client.beta.sessions.create(agent=agent, environment_id=environment).id
        events: queue.Queue[tuple[str, float]] = queue.Queue()
        ready = threading.Event()
        threading.Thread(target=_reader, args=(client, session_id, events, ready), daemon=True).start()
        assert ready.wait(30), "the stream did not open"
        time.sleep(0.2)
        sent = time.perf_counter()
        client.beta.sessions.events.send(session_id, events=_message("Hi"))
        _kind, at, tool_call = _until_idle(events)
        assert tool_call is not None, "the turn made no tool call"
        calls.append(tool_call)
        turns.append(at - sent)
    return {"tool_use_to_tool_result": _stats_ms(calls), "send_to_idle": _stats_ms(turns)}


def _create_sessions(
    client: anthropic.Anthropic, agent: str, environment: str, count: int, failures: list[str]
) -> list[str]:
    def create(_index: int) -> str | None:
        try:
            return client.beta.sessions.create(agent=agent, environment_id=environment).id
        except anthropic.APIError as exc:
            failures.append(repr(exc)[:200])
            return None

    with ThreadPoolExecutor(8) as pool:
        return [sid for sid in pool.map(create, range(count)) if sid is not None]


def _db_idle_counter(live: LiveGalley) -> Callable[[list[str]], int]:
    """Counts idle sessions straight from the live server's database (cheaper for it than paging
    sessions.list every 100 ms; the SDK checks every log afterwards)."""
    url = live.env["DATABASE_URL"]
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(urlparse(url).path, timeout=30, check_same_thread=False)
        mark = "?"
    else:
        import psycopg

        conn = psycopg.connect(url, autocommit=True)  # type: ignore[assignment]
        mark = "%s"

    def count(ids: list[str]) -> int:
        marks = ",".join(mark for _ in ids)
        cur = conn.execute(
            f"SELECT count(*) FROM agent_sessions_session WHERE status = 'idle' AND id IN ({marks})", ids
        )
        return int(cur.fetchone()[0])

    return count


def _burst(
    client: anthropic.Anthropic,
    model: ScriptedModel,
    server: Server,
    live: LiveGalley,
    ids: list[str],
    expected: list[str],
) -> dict[str, Any]:
    """Every session gets `events.send` at the same moment (one thread per 10 sessions, released by
    one barrier); the model answers each after 1 s."""
    count_idle = _db_idle_counter(live)
    senders = min(100, len(ids))
    shares = [ids[i::senders] for i in range(senders)]
    barrier = threading.Barrier(senders + 1)
    accepted: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def send(share: list[str]) -> None:
        barrier.wait()
        for session_id in share:
            try:
                client.beta.sessions.events.send(session_id, events=_message("Hi"))
                at = time.perf_counter()
                with lock:
                    accepted.append(at)
            except Exception as exc:
                with lock:
                    failures.append(repr(exc)[:200])

    threads = [threading.Thread(target=send, args=(share,), daemon=True) for share in shares]
    for thread in threads:
        thread.start()
    model.max_in_flight = 0
    calls_before = len(model.timings)
    in_flight: list[int] = []
    rss_peak = [0]
    pids = server.pids()
    cpu_before, worker_before = _cpu(pids), server.worker_cpu()

    def sample() -> None:
        in_flight.append(model.in_flight)
        rss_peak[0] = max(rss_peak[0], _rss(pids))

    with _sampler(sample, 0.1):
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        all_accepted = max(accepted) - started if accepted else float("nan")
        deadline = time.perf_counter() + 300
        done = 0
        while time.perf_counter() < deadline:
            done = count_idle(ids)
            if done == len(ids):
                break
            time.sleep(0.1)
        all_done = time.perf_counter() - started
    cpu = _cpu(pids) - cpu_before
    worker_cpu = server.worker_cpu() - worker_before
    calls = len(model.timings) - calls_before

    def log_types(session_id: str) -> list[str]:
        return [e.type for e in client.beta.sessions.events.list(session_id, limit=100)]

    with ThreadPoolExecutor(8) as pool:
        logs = list(pool.map(log_types, ids))
    exact = sum(1 for types in logs if types == expected)
    return {
        "sessions": len(ids),
        "send_failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "all_accepted_s": round(all_accepted, 3),
        "accept_p50_s": round(statistics.median(a - started for a in accepted), 3) if accepted else None,
        "all_idle_s": round(all_done, 2),
        "idle_at_end": done,
        "server_cpu_s": round(cpu, 2),
        "server_peak_rss_mb": round(rss_peak[0] / 2**20, 1),
        "model_in_flight_peak": model.max_in_flight,
        "model_in_flight_median": statistics.median(in_flight) if in_flight else 0,
        "model_calls": calls,
        "worker_cpu_ms_per_model_call": round(worker_cpu * 1000 / max(1, calls), 2),
        "sessions_with_exact_log": exact,
    }


def _idle_streams(
    client: anthropic.Anthropic, server: Server, ids: list[str], seconds: float
) -> dict[str, Any]:
    pids = server.pids()
    before = _cpu(pids)
    time.sleep(seconds)
    idle_cpu = _cpu(pids) - before  # the same server with no stream open: its own timers and polls
    readers = []
    readies = []
    sink: queue.Queue[tuple[str, float]] = queue.Queue()
    for session_id in ids:
        ready = threading.Event()
        thread = threading.Thread(target=_reader, args=(client, session_id, sink, ready), daemon=True)
        thread.start()
        readers.append(thread)
        readies.append(ready)
    deadline = time.monotonic() + 30  # for all of them: a server that opens none must not take 100 x 30 s
    opened = sum(ready.wait(max(0.0, deadline - time.monotonic())) for ready in readies)
    time.sleep(3)  # each stream has read its backlog
    pids = server.pids()
    before = _cpu(pids)
    time.sleep(seconds)
    cpu = _cpu(pids) - before
    return {
        "streams": opened,
        "seconds": seconds,
        "server_cpu_percent_of_one_core": round(100 * cpu / seconds, 2),
        "server_cpu_percent_with_no_stream": round(100 * idle_cpu / seconds, 2),
    }


def _run_config(name: str, workers: int, env_overrides: dict[str, str]) -> dict[str, Any]:
    saved = {k: os.environ.get(k) for k in ("DATABASE_URL", "REDIS_URL")}
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    os.environ.update(env_overrides)
    turns = 10 if QUICK else 30
    sizes = [100] if QUICK else [100, 1000]
    result: dict[str, Any] = {"config": name, "worker_processes": workers}
    try:
        with scripted_model(lambda body: text("Hello from the scripted model.")) as model:
            env = {
                "ANTHROPIC_API_KEY": "sk-bench",
                "ANTHROPIC_BASE_URL": model.base_url,
                "GALLEY_SSE_HEARTBEAT_SECONDS": "15",
                "GALLEY_WORKER_CONCURRENCY": "256",
            }
            serve_args = ("--worker-processes", str(workers))
            with live_galley(env, serve_args=serve_args) as live:
                server = Server(live)
                result["settled_after_s"] = _settle(server)
                result["web_processes"] = sum(
                    1 for c in _tree(server.root).values() if "galley.webserver" in c
                )
                client = live.client(timeout=120, max_retries=0)
                agent = client.beta.agents.create(name="bench", model=MODEL)
                environment = client.beta.environments.create(name="bench")
                session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
                result["text_turn"] = _turns(client, model, server, session.id, turns)
                expected = [e.type for e in client.beta.sessions.events.list(session.id, limit=100)][-6:]
                result["text_turn_log"] = expected

                def tool_responder(body: dict[str, Any]) -> Reply:
                    last = body["messages"][-1]["content"]
                    if isinstance(last, list) and any(b.get("type") == "tool_result" for b in last):
                        return text("It said hi.")
                    return tool_call("bash", {"command": "echo hi"})

                model.responder = tool_responder
                tool_agent = client.beta.agents.create(
                    name="bench-tools", model=MODEL, tools=[{"type": "agent_toolset_20260401"}]
                )
                tool_session = client.beta.sessions.create(agent=tool_agent.id, environment_id=environment.id)
                result["tool_turn"] = _turns(client, model, server, tool_session.id, max(5, turns // 2))
                result["cold_tool_call"] = _cold_tool_calls(
                    client, tool_agent.id, environment.id, 5 if QUICK else 15
                )

                def thinking_tool_responder(body: dict[str, Any]) -> Reply:
                    reply = tool_responder(body)
                    reply.delay = THINKING_SECONDS  # before its first byte, as a real model takes longer
                    return reply

                model.responder = thinking_tool_responder
                result["cold_tool_call_thinking_model"] = _cold_tool_calls(
                    client, tool_agent.id, environment.id, 5 if QUICK else 10
                )
                result["cold_tool_call_thinking_model"]["model_first_byte_s"] = THINKING_SECONDS
                # The streams those phases opened end here: the idle-stream figures count only their own.
                client.close()
                client = live.client(timeout=120, max_retries=0)

                model.responder = lambda body: text("Done.", delay=1.0)
                for size in sizes:
                    create_failures: list[str] = []
                    ids = _create_sessions(client, agent.id, environment.id, size, create_failures)
                    result[f"burst_{size}"] = _burst(client, model, server, live, ids, expected)
                    result[f"burst_{size}"]["create_failures"] = len(create_failures)
                    result[f"burst_{size}"]["first_create_failure"] = (create_failures or [None])[0]
                    if size == 100:
                        streams_client = live.client(timeout=120, max_retries=0)
                        result["idle_streams_100"] = _idle_streams(
                            streams_client, server, ids, 5 if QUICK else 10
                        )
                        streams_client.close()  # the 100 streams end here, before the next burst
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return result


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1
        ):
            return True
    except OSError:
        return False


def main() -> dict[str, Any]:
    pg = os.environ.get("GALLEY_BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    if not pg.startswith("postgres"):
        pg = "postgres://postgres@127.0.0.1:5432/postgres"
    redis = (
        os.environ.get("GALLEY_BENCH_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    )
    wanted = os.environ.get("GALLEY_BENCH_CONFIGS", "embedded-1,pg-1,pg-4").split(",")
    load = os.getloadavg()
    results: dict[str, Any] = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "cores": len(os.sched_getaffinity(0)),
        "load_average_at_start": [round(x, 2) for x in load],
        "quick": QUICK,
    }
    with scripted_model(lambda body: text("Hello from the scripted model.")) as model:
        turns = 10 if QUICK else 30
        results["bare_client"] = {"text_turn": _stats_ms(_bare_text_turns(model, turns))}
        model.responder = lambda body: (
            text("It said hi.")
            if any(
                isinstance(m["content"], list) and any(b.get("type") == "tool_result" for b in m["content"])
                for m in body["messages"]
            )
            else tool_call("bash", {"command": "echo hi"})
        )
        results["bare_client"]["tool_turn"] = _stats_ms(_bare_tool_turns(model, max(5, turns // 2)))
    results["configs"] = {}
    for name in wanted:
        name = name.strip()
        backend, _, count = name.partition("-")
        workers = int(count or "1")
        if backend == "embedded":
            overrides: dict[str, str] = {}
        elif backend == "pg":
            if not (_reachable(pg, 5432) and _reachable(redis, 6379)):
                results["configs"][name] = {"skipped": "PostgreSQL or Redis is not reachable"}
                continue
            overrides = {"DATABASE_URL": pg, "REDIS_URL": redis}
        else:
            raise SystemExit(f"unknown configuration {name!r}")
        started = time.monotonic()
        print(f"-- {name}", flush=True)
        results["configs"][name] = _run_config(name, workers, overrides)
        results["configs"][name]["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(results["configs"][name], indent=2), flush=True)
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(results, indent=2))
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    for cfg in results["configs"].values():
        if "text_turn" in cfg:
            bare = results["bare_client"]["text_turn"]["p50_ms"]
            cfg["text_turn_ratio_to_bare_p50"] = round(cfg["text_turn"]["send_to_idle"]["p50_ms"] / bare, 1)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
