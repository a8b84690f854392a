"""Self-hosted environment benchmark (issue 9), end to end through a live Galley (Daphne and a
real Celery worker), the official SDK, and the scripted model at zero latency.

Figures, p50 and p95, in one run:
- poll to ack: an item is waiting; the SDK's `work.poll` then `work.ack` (the environment key);
- enqueue to hand-out: a long poll is already waiting when `sessions.create` enqueues the item;
- per-tool round trip: the model's answer with a bash call is complete -> the next model request
  arrives, for `bash true`. Self-hosted: `agent.tool_use` appended, the worker
  (`manage.py environment_worker`, bwrap on its host) receives it on its stream, runs it, posts
  `user.tool_result`, the harness is kicked and calls the model. Baseline: the same tool in a
  local bwrap sandbox run by the harness itself (a cloud environment). The difference of the p50s
  is what the self-hosted round trip adds. The self-hosted round trip is also split in three legs,
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
TOOL_CALLS = 40


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


def _tool_gaps(
    model: ScriptedModel, client: anthropic.Anthropic, agent_id: str, environment_id: str
) -> tuple[list[float], str, list[tuple[float, float]]]:
    """Run one warm-up turn, then a turn of TOOL_CALLS bash calls; the gaps between the end of
    each answer that asked for a tool and the arrival of the next request (with the session and
    the model's (start, end) timings, for the split)."""
    session = client.beta.sessions.create(agent=agent_id, environment_id=environment_id)
    model.push(tool_call("bash", {"command": "true"}), text("warm"))
    client.beta.sessions.events.send(
        session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "warm up"}]}]
    )
    _wait(lambda: _idle(client, session.id))
    first = len(model.timings)
    model.push(*[tool_call("bash", {"command": "true"}) for _ in range(TOOL_CALLS)], text("done"))
    client.beta.sessions.events.send(
        session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "go"}]}]
    )
    _wait(lambda: len(model.timings) >= first + TOOL_CALLS + 1 and _idle(client, session.id))
    timings = model.timings[first : first + TOOL_CALLS + 1]
    return [timings[i + 1][0] - timings[i][1] for i in range(TOOL_CALLS)], session.id, timings


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


def _legs(server: Any, session_id: str, timings: list[tuple[float, float]]) -> dict[str, dict[str, float]]:
    """Split each self-hosted round trip at the moments its `agent.tool_use` and `user.tool_result`
    were recorded (the events' created_at, read from the database; same host, same clock)."""
    code = (
        "import json; from sessions.models import Event; "
        f"rows = Event.objects.filter(session_id={session_id!r}, "
        "type__in=('agent.tool_use', 'user.tool_result')).order_by('seq'); "
        "print(json.dumps([[e.type, e.created_at.timestamp()] for e in rows]))"
    )
    rows = json.loads(server.manage("shell", "-c", code).stdout.strip().splitlines()[-1])
    uses = [at for kind, at in rows if kind == "agent.tool_use"][-TOOL_CALLS:]
    results = [at for kind, at in rows if kind == "user.tool_result"][-TOOL_CALLS:]
    offset = time.time() - time.monotonic()  # the model's timings are monotonic
    legs: dict[str, list[float]] = {
        "answer_to_tool_use": [],
        "tool_use_to_result": [],
        "result_to_next_request": [],
    }
    for i in range(min(TOOL_CALLS, len(uses), len(results))):
        answered, next_request = timings[i][1] + offset, timings[i + 1][0] + offset
        legs["answer_to_tool_use"].append(uses[i] - answered)
        legs["tool_use_to_result"].append(results[i] - uses[i])
        legs["result_to_next_request"].append(next_request - results[i])
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

            before = _transactions(server)
            local, _session, _timings = _tool_gaps(model, client, agent.id, cloud.id)
            local_tx = _transactions(server)

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
                        "30",
                    ],
                    cwd=ROOT,
                    env=worker_env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                try:
                    remote_before = _transactions(server)
                    remote, remote_session, remote_timings = _tool_gaps(model, client, agent.id, hosted.id)
                    remote_tx = _transactions(server)
                finally:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=30)
                    from sandboxes.quota import volumes_release_under

                    volumes_release_under(Path(host))  # the worker mounted its sandbox's volume here
            results["self_hosted_legs"] = _legs(server, remote_session, remote_timings)
            if before is not None and local_tx is not None and remote_before is not None and remote_tx:
                # Two turns each (warm-up and measured): per tool call, roughly.
                calls = TOOL_CALLS + 1
                results["db_transactions_per_call"] = {
                    "local_sandbox": round((local_tx - before) / calls, 1),
                    "self_hosted": round((remote_tx - remote_before) / calls, 1),
                }

    results["poll_to_ack"] = _stats(poll_ack)
    results["enqueue_to_handout"] = _stats(handout) | {"samples": len(handout)}
    results["tool_round_trip_local_sandbox"] = _stats(local)
    results["tool_round_trip_self_hosted"] = _stats(remote)
    results["self_hosted_added_p50_ms"] = round(
        results["tool_round_trip_self_hosted"]["p50_ms"] - results["tool_round_trip_local_sandbox"]["p50_ms"],
        2,
    )
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
    print(f"| self-hosted adds (p50) | {results['self_hosted_added_p50_ms']} ms | |")
    if "db_transactions_per_call" in results:
        tx = results["db_transactions_per_call"]
        print(f"| PostgreSQL transactions per call | local {tx['local_sandbox']} |", end="")
        print(f" self-hosted {tx['self_hosted']} |")
    for name, leg in results["self_hosted_legs"].items():
        print(f"| self-hosted leg: {name} | {leg['p50_ms']} ms | {leg['p95_ms']} ms |")
    return results


if __name__ == "__main__":
    main()
