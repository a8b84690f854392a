"""Streaming benchmark (issue 3): the time from the SDK's `events.send` call to events arriving
on an SSE stream opened before it, measured end to end through a live Galley (Daphne and a real
Celery worker) with the official SDK and the scripted model at zero latency.

Figures, p50 and p95 over ROUNDS turns:
- echo: send -> the echoed `user.message` on the stream;
- first harness event: send -> `span.model_request_start`, the first event the agent loop appends;
- first agent text: send -> the first `event_start` preview (asked for with event_deltas);
- turn: send -> `session.status_idle`.
The data dir, database and broker come from tests/live.py: the embedded defaults unless
DATABASE_URL / REDIS_URL say otherwise.
"""

import json
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live import live_galley  # noqa: E402
from tests.model_server import scripted_model, text  # noqa: E402

RESULT = ROOT / "var" / "bench" / "stream.json"
ROUNDS = 30
MARKS = ("user.message", "span.model_request_start", "event_start", "session.status_idle")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _reader(
    client: Any, session_id: str, out: "queue.Queue[tuple[str, float]]", ready: threading.Event
) -> None:
    try:
        with client.beta.sessions.events.stream(session_id, event_deltas=["agent.message"]) as stream:
            ready.set()
            for event in stream:
                out.put((event.type, time.perf_counter()))
    except Exception:  # the server going away at the end of the run
        return


def main() -> dict[str, Any]:
    samples: dict[str, list[float]] = {mark: [] for mark in MARKS}
    backend = "postgresql+redis" if os.environ.get("REDIS_URL") else "embedded"
    with scripted_model(lambda body: text("Hello from the scripted model.")) as model:
        env = {"ANTHROPIC_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": model.base_url}
        with live_galley(env) as server:
            client = server.client(timeout=60)
            agent = client.beta.agents.create(name="bench", model="claude-sonnet-4-6")
            environment = client.beta.environments.create(name="bench")
            session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
            events: queue.Queue[tuple[str, float]] = queue.Queue()
            ready = threading.Event()
            threading.Thread(target=_reader, args=(client, session.id, events, ready), daemon=True).start()
            ready.wait(10)
            time.sleep(0.5)  # the stream's first read is done: what follows is live delivery
            message = [{"type": "user.message", "content": [{"type": "text", "text": "Hi"}]}]
            for round_no in range(ROUNDS + 3):
                sent = time.perf_counter()  # the call starts: the request, its commit and the answer count
                client.beta.sessions.events.send(session.id, events=message)
                seen: dict[str, float] = {}
                while "session.status_idle" not in seen:
                    kind, at = events.get(timeout=30)
                    seen.setdefault(kind, at)
                if round_no >= 3:  # the first turns warm the worker, the provider and the stream
                    for mark in MARKS:
                        samples[mark].append(max(0.0, seen[mark] - sent))
    figures = {
        mark: {
            "p50_ms": round(statistics.median(values) * 1000, 1),
            "p95_ms": round(_pct(values, 0.95) * 1000, 1),
        }
        for mark, values in samples.items()
    }
    result = {"backend": backend, "rounds": ROUNDS, "send_to": figures}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2))
    print("| send to ... on the stream | p50 | p95 |")
    print("|---|---|---|")
    for mark in MARKS:
        print(f"| {mark} | {figures[mark]['p50_ms']} ms | {figures[mark]['p95_ms']} ms |")
    return result


if __name__ == "__main__":
    main()
