"""Self-hosted environment benchmark (issue 9), end to end through a live Galley (Daphne and a
real Celery worker), the official SDK, and the scripted model at zero latency.

Figures, p50 and p95, in one run:
- poll to ack: an item is waiting; the SDK's `work.poll` then `work.ack` (the environment key);
- enqueue to hand-out: a long poll is already waiting when `sessions.create` enqueues the item;
- per-tool round trip: the model's answer with a bash call is complete -> the next model request
  arrives, for `bash true`. Self-hosted: `agent.tool_use` appended, the worker
  (`manage.py environment_worker`, bwrap on its host) receives it on its stream, runs it, posts
  `user.tool_result`, the harness is kicked and calls the model. Baseline: the same tool in a
  local bwrap sandbox run by the harness itself (a cloud environment). The two are measured in
  paired blocks (a turn of calls in each session, ABBA order, the worker running throughout): what
  the self-hosted round trip adds is the median of the blocks' differences of medians, so a drift
  in the machine's load falls on both sides alike. The self-hosted round trip is also split in three legs,
  from the events' own timestamps: the model's answer -> `agent.tool_use` recorded (harness),
  -> `user.tool_result` recorded (the push to the worker's stream, the tool, the worker's send),
  -> the next model request (the harness noticing the answer and calling the model).
The data dir, database and broker come from tests/live.py: the embedded defaults unless
DATABASE_URL / REDIS_URL say otherwise.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anthropic  # noqa: E402

from tests.live import live_galley  # noqa: E402
from tests.model_server import ScriptedModel, scripted_model, text, tool_call  # noqa: E402

RESULT = ROOT / "var" / "bench" / "selfhosted.json"
POLLS = 30
BLOCKS = 8
CALLS_PER_BLOCK = 5


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _stats(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(_pct(values, 0.5) * 1000, 2), "p95_ms": round(_pct(values, 0.95) * 1000, 2)}


def _wait(predicate: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError("timed out")


def _worker_client(base_url: str, key: str) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=base_url, auth_token=key, max_retries=0, timeout=30)
    client.api_key = None
    return client


def _idle(client: anthropic.Anthropic, session_id: str) -> bool:
    return client.beta.sessions.retrieve(session_id).status == "idle"


def _session(model: ScriptedModel, client: anthropic.Anthropic, agent_id: str, environment_id: str) -> str:
    """A session warmed up by one turn with one bash call (the sandbox, or the worker's attach)."""
    session = client.beta.sessions.create(agent=agent_id, environment_id=environment_id)
    model.push(tool_call("bash", {"command": "true"}), text("warm"))
    client.beta.sessions.events.send(
        session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "warm up"}]}]
    )
    _wait(lambda: _idle(client, session.id))
    return session.id


def _tool_turn(
    model: ScriptedModel, client: anthropic.Anthropic, session_id: str
) -> list[tuple[float, float]]:
    """One turn of CALLS_PER_BLOCK bash calls; for each call, the moment the answer that asked for
    it ended and the moment the next request arrived (the model's monotonic clock)."""
    first = len(model.timings)
    model.push(*[tool_call("bash", {"command": "true"}) for _ in range(CALLS_PER_BLOCK)], text("done"))
    client.beta.sessions.events.send(
        session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": "go"}]}]
    )
    _wait(lambda: len(model.timings) >= first + CALLS_PER_BLOCK + 1 and _idle(client, session_id))
    timings = model.timings[first : first + CALLS_PER_BLOCK + 1]
    return [(timings[i][1], timings[i + 1][0]) for i in range(CALLS_PER_BLOCK)]


def _paired_blocks(
    model: ScriptedModel, client: anthropic.Anthropic, local_id: str, remote_id: str
) -> tuple[list[float], list[float], list[float], list[tuple[float, float]]]:
    """BLOCKS pairs of turns, one in each session, in ABBA order so that a drift in the machine's
    load falls on both alike. Returns the local and self-hosted gaps, each block's difference of
    medians (self-hosted minus local), and the self-hosted calls' (answered, next request) pairs."""
    local: list[float] = []
    remote: list[float] = []
    paired: list[float] = []
    remote_calls: list[tuple[float, float]] = []
    for block in range(BLOCKS):
        order = (local_id, remote_id) if block % 2 == 0 else (remote_id, local_id)
        gaps: dict[str, list[float]] = {}
        for session_id in order:
            calls = _tool_turn(model, client, session_id)
            gaps[session_id] = [after - before for before, after in calls]
            if session_id == remote_id:
                remote_calls.extend(calls)
        local.extend(gaps[local_id])
        remote.extend(gaps[remote_id])
        paired.append(_pct(gaps[remote_id], 0.5) - _pct(gaps[local_id], 0.5))
    return local, remote, paired, remote_calls


def _transactions(server: Any) -> int | None:
    """PostgreSQL only: the transactions committed so far in the server's database (every
    autocommit query is one), a count that does not depend on how loaded the machine is."""
    url = server.env.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return None
    import psycopg

    time.sleep(1.5)  # backends report their counters when idle for a moment
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else None


def _legs(server: Any, session_id: str, calls: list[tuple[float, float]]) -> dict[str, dict[str, float]]:
    """Split each self-hosted round trip at the moments its `agent.tool_use` and `user.tool_result`
    were recorded (the events' created_at, read from the database; same host, same clock)."""
    code = (
        "import json; from sessions.models import Event; "
        f"rows = Event.objects.filter(session_id={session_id!r}, "
        "type__in=('agent.tool_use', 'user.tool_result')).order_by('seq'); "
        "print(json.dumps([[e.type, e.created_at.timestamp()] for e in rows]))"
    )
    rows = json.loads(server.manage("shell", "-c", code).stdout.strip().splitlines()[-1])
    # The measured calls are the session's last ones (the warm-up turn's call comes first).
    uses = [at for kind, at in rows if kind == "agent.tool_use"][-len(calls) :]
    results = [at for kind, at in rows if kind == "user.tool_result"][-len(calls) :]
    offset = time.time() - time.monotonic()  # the model's timings are monotonic
    legs: dict[str, list[float]] = {
        "answer_to_tool_use": [],
        "tool_use_to_result": [],
        "result_to_next_request": [],
    }
    for (answered, next_request), used, result in zip(calls, uses, results, strict=True):
        legs["answer_to_tool_use"].append(used - (answered + offset))
        legs["tool_use_to_result"].append(result - used)
        legs["result_to_next_request"].append(next_request + offset - result)
    return {name: _stats(values) for name, values in legs.items() if values}


def main() -> dict[str, Any]:
    backend = "postgresql+redis" if os.environ.get("REDIS_URL") else "embedded"
    results: dict[str, Any] = {"backend": backend}
    with scripted_model() as model:
        env = {
            "ANTHROPIC_API_KEY": "sk-bench",
            "ANTHROPIC_BASE_URL": model.base_url,
            "GALLEY_SWEEP_SECONDS": "5",
        }
        with live_galley(env) as server:
            client = server.client(timeout=60)
            toolset = [
                {
                    "type": "agent_toolset_20260401",
                    "default_config": {"enabled": False},
                    "configs": [{"name": "bash", "enabled": True}],
                }
            ]
            agent = client.beta.agents.create(name="bench-sh", model="claude-sonnet-4-6", tools=toolset)
            cloud = client.beta.environments.create(name="bench-local")
            hosted = client.beta.environments.create(name="bench-self-hosted", config={"type": "self_hosted"})
            key = server.manage("create_environment_key", hosted.id, "bench").stdout.strip().splitlines()[-1]
            worker = _worker_client(server.base_url, key)

            # poll -> ack with an item waiting
            poll_ack: list[float] = []
            for _ in range(POLLS):
                client.beta.sessions.create(agent=agent.id, environment_id=hosted.id)
                started = time.perf_counter()
                item = worker.beta.environments.work.poll(
                    hosted.id, block_ms=999, anthropic_worker_id="bench"
                )
                assert item is not None
                worker.beta.environments.work.ack(item.id, environment_id=hosted.id)
                poll_ack.append(time.perf_counter() - started)
                worker.beta.environments.work.stop(item.id, environment_id=hosted.id, force=True)

            # enqueue -> hand-out, with the long poll already waiting
            import threading

            handout: list[float] = []
            for _ in range(POLLS):
                box: dict[str, Any] = {}

                def poll(box: dict[str, Any]) -> None:
                    box["item"] = worker.beta.environments.work.poll(hosted.id, block_ms=999)
                    box["at"] = time.perf_counter()

                thread = threading.Thread(target=poll, args=(box,))
                thread.start()
                time.sleep(0.3)
                created = time.perf_counter()
                client.beta.sessions.create(agent=agent.id, environment_id=hosted.id)
                thread.join(timeout=30)
                if box.get("item") is None:
                    continue  # the poll timed out before the create (slow machine); not a sample
                handout.append(box["at"] - created)
                worker.beta.environments.work.ack(box["item"].id, environment_id=hosted.id)
                worker.beta.environments.work.stop(box["item"].id, environment_id=hosted.id, force=True)

            with tempfile.TemporaryDirectory(prefix="galley-bench-worker-") as host:
                os.chmod(host, 0o711)
                worker_env = {
                    k: v
                    for k, v in os.environ.items()
                    if not k.startswith(("DATABASE_URL", "REDIS_URL", "ANTHROPIC_"))
                }
                worker_env.update(
                    {
                        "DJANGO_SETTINGS_MODULE": "galley.settings",
                        "GALLEY_DATA_DIR": host,
                        "ANTHROPIC_ENVIRONMENT_KEY": key,
                        "ANTHROPIC_BASE_URL": server.base_url,
                    }
                )
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "manage.py",
                        "environment_worker",
                        "--environment",
                        hosted.id,
                        "--max-idle",
                        "60",
                    ],
                    cwd=ROOT,
                    env=worker_env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                try:
                    local_id = _session(model, client, agent.id, cloud.id)
                    remote_session = _session(model, client, agent.id, hosted.id)
                    before = _transactions(server)
                    _tool_turn(model, client, local_id)
                    local_tx = _transactions(server)
                    _tool_turn(model, client, remote_session)
                    remote_tx = _transactions(server)
                    local, remote, paired, remote_calls = _paired_blocks(
                        model, client, local_id, remote_session
                    )
                finally:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=30)
                    from sandboxes.quota import volumes_release_under

                    volumes_release_under(Path(host))  # the worker mounted its sandbox's volume here
            results["self_hosted_legs"] = _legs(server, remote_session, remote_calls)
            if before is not None and local_tx is not None and remote_tx is not None:
                # One turn each, its CALLS_PER_BLOCK calls and the closing answer: per call, roughly.
                results["db_transactions_per_call"] = {
                    "local_sandbox": round((local_tx - before) / CALLS_PER_BLOCK, 1),
                    "self_hosted": round((remote_tx - local_tx) / CALLS_PER_BLOCK, 1),
                }

    results["poll_to_ack"] = _stats(poll_ack)
    results["enqueue_to_handout"] = _stats(handout) | {"samples": len(handout)}
    results["tool_round_trip_local_sandbox"] = _stats(local)
    results["tool_round_trip_self_hosted"] = _stats(remote)
    # What self-hosting adds: the median over blocks of each block's difference of medians, the
    # two sides measured side by side in the same moment of the machine's load.
    results["self_hosted_added_p50_ms"] = round(_pct(paired, 0.5) * 1000, 2)
    results["self_hosted_added_by_block_ms"] = [round(d * 1000, 2) for d in paired]
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"| figure ({backend}) | p50 | p95 |")
    print("|---|---|---|")
    for name in (
        "poll_to_ack",
        "enqueue_to_handout",
        "tool_round_trip_local_sandbox",
        "tool_round_trip_self_hosted",
    ):
        print(f"| {name} | {results[name]['p50_ms']} ms | {results[name]['p95_ms']} ms |")
    added = results["self_hosted_added_p50_ms"]
    print(f"| self-hosted adds (median of {BLOCKS} paired blocks) | {added} ms | |")
    if "db_transactions_per_call" in results:
        tx = results["db_transactions_per_call"]
        print(f"| PostgreSQL transactions per call | local {tx['local_sandbox']} |", end="")
        print(f" self-hosted {tx['self_hosted']} |")
    for name, leg in results["self_hosted_legs"].items():
        print(f"| self-hosted leg: {name} | {leg['p50_ms']} ms | {leg['p95_ms']} ms |")
    return results


if __name__ == "__main__":
    main()
