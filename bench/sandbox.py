"""Sandbox benchmarks: cold start, per-call overhead of bash against a plain subprocess.run, 50 busy
sandboxes.

Run: `python -m bench.sandbox` (part of `make bench`). Needs bubblewrap. Prints a Markdown table and returns
the figures as a dict.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

COLD_STARTS = 40
CALLS = 200
BUSY = 50
BUSY_COMMAND = "python3 -c 'print(sum(i * i for i in range(300000)))'"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _live(name: str) -> Any:
    from sessions.sandbox.backends import SAFE_PATH, Limits, SandboxSpec, backend_get, sandbox_uid
    from sessions.sandbox.services import LiveSandbox, sandbox_root

    backend = backend_get()
    root = sandbox_root(name)
    uid = sandbox_uid(name) if os.geteuid() == 0 else os.geteuid()
    env = {"HOME": "/workspace", "PATH": SAFE_PATH, "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
    spec = SandboxSpec(root=root, uid=uid, share_network=True, limits=Limits.from_settings(), env=env)
    return LiveSandbox(key=name, session_id=name, spec=spec, backend=backend)


def main() -> dict[str, Any]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    base = Path(tempfile.mkdtemp(prefix="galley-bench-"))
    os.chmod(base, 0o711)
    os.environ["GALLEY_SANDBOX_ROOT"] = str(base / "sandboxes")
    import django

    django.setup()
    from django.conf import settings

    settings.GALLEY_SANDBOX_ROOT = base / "sandboxes"
    from sessions.sandbox.services import _start_shell, sandbox_shell, sandbox_stop
    from sessions.sandbox.toolset import _run_bash, _run_file_tool

    results: dict[str, Any] = {}
    try:
        # Cold start: from no process to a shell that has answered its first command.
        cold: list[float] = []
        provision: list[float] = []  # a new sandbox's directories and volume (image: mkfs + mount)
        for i in range(COLD_STARTS):
            live = _live(f"bench_cold_{i}")
            from sessions.sandbox.services import sandbox_provision

            started = time.perf_counter()
            sandbox_provision(root=live.spec.root, uid=live.spec.uid)
            provision.append(time.perf_counter() - started)
            started = time.perf_counter()
            live.shell = _start_shell(live)
            cold.append(time.perf_counter() - started)
            sandbox_stop(live)

        # Per call: the bash tool in a warm sandbox vs subprocess.run of the same command, interleaved.
        live = _live("bench_calls")
        with live.lock:
            sandbox_shell(live)
        tool: list[float] = []
        plain: list[float] = []
        for _ in range(CALLS):
            started = time.perf_counter()
            outcome = _run_bash(live, {"command": "echo hi"}, None)
            tool.append(time.perf_counter() - started)
            assert not outcome.is_error, outcome
            started = time.perf_counter()
            subprocess.run(["/bin/bash", "-c", "echo hi"], capture_output=True, check=True)
            plain.append(time.perf_counter() - started)
        reads: list[float] = []
        _run_bash(live, {"command": "seq 1 100 > numbers.txt"}, None)
        for _ in range(CALLS // 4):
            started = time.perf_counter()
            outcome = _run_file_tool(live, "read", {"file_path": "/workspace/numbers.txt"})
            reads.append(time.perf_counter() - started)
            assert not outcome.is_error, outcome
        sandbox_stop(live)

        # 50 sandboxes busy at once, each starting cold and running a CPU-bound command.
        lives = [_live(f"bench_busy_{i}") for i in range(BUSY)]
        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()

        def work(live: Any) -> None:
            started = time.perf_counter()
            outcome = _run_bash(live, {"command": BUSY_COMMAND}, None)
            with lock:
                latencies.append(time.perf_counter() - started)
                if outcome.is_error:
                    failures.append(outcome.content[0]["text"][:200])

        wall = time.perf_counter()
        threads = [threading.Thread(target=work, args=(live,)) for live in lives]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - wall
        for live in lives:
            sandbox_stop(live)

        results = {
            "cold_start_p50": _pct(cold, 0.5),
            "cold_start_p95": _pct(cold, 0.95),
            "provision_p50": _pct(provision, 0.5),
            "provision_p95": _pct(provision, 0.95),
            "bash_call_p50": _pct(tool, 0.5),
            "bash_call_p95": _pct(tool, 0.95),
            "subprocess_p50": _pct(plain, 0.5),
            "subprocess_p95": _pct(plain, 0.95),
            "overhead_p50": _pct(tool, 0.5) - _pct(plain, 0.5),
            "read_p50": _pct(reads, 0.5),
            "read_p95": _pct(reads, 0.95),
            "busy_wall": wall,
            "busy_p50": _pct(latencies, 0.5),
            "busy_p95": _pct(latencies, 0.95),
            "busy_failures": len(failures),
            "cpus": os.cpu_count(),
            "mean_cold": statistics.mean(cold),
        }
        print("| measure | p50 | p95 |")
        print("|---|---|---|")
        print(
            f"| sandbox cold start (bwrap + bash, first answer) | {_ms(results['cold_start_p50'])} | "
            f"{_ms(results['cold_start_p95'])} |"
        )
        print(
            f"| new sandbox's volume (image: sparse file, mkfs.ext4, loop mount) | "
            f"{_ms(results['provision_p50'])} | {_ms(results['provision_p95'])} |"
        )
        print(
            f"| bash tool call `echo hi`, warm sandbox | {_ms(results['bash_call_p50'])} | "
            f"{_ms(results['bash_call_p95'])} |"
        )
        print(
            f"| plain `subprocess.run(['bash','-c','echo hi'])` | {_ms(results['subprocess_p50'])} | "
            f"{_ms(results['subprocess_p95'])} |"
        )
        print(f"| per-call overhead (bash tool - subprocess.run), p50 | {_ms(results['overhead_p50'])} | |")
        print(
            f"| read tool call (forked into the sandbox's mounts) | {_ms(results['read_p50'])} | "
            f"{_ms(results['read_p95'])} |"
        )
        print(
            f"| {BUSY} sandboxes busy at once (cold start + `{BUSY_COMMAND}`), per sandbox | "
            f"{_ms(results['busy_p50'])} | {_ms(results['busy_p95'])} |"
        )
        print(
            f"\n{BUSY} busy sandboxes: wall {results['busy_wall']:.2f} s on {results['cpus']} CPUs, "
            f"{len(failures)} failures"
        )
        if failures:
            print("first failure:", failures[0], file=sys.stderr)
        return results
    finally:
        from sessions.sandbox.quota import volumes_release_under

        volumes_release_under(base)
        shutil.rmtree(base, ignore_errors=True)
        os.environ.pop("GALLEY_SANDBOX_ROOT", None)  # live servers started later use their own data dir


# --- a workspace of 20,000 files, end to end (issue 14 item 1) ---------------------------------------------

MANY_FILES = 20_000
FILE_TURNS = 15
RESULT = Path(__file__).resolve().parent.parent / "var" / "bench" / "sandbox.json"


def _turn_seconds(client: Any, model: Any, session_id: str, command: str) -> float:
    """One turn through the SDK and a live server: send -> bash tool call -> answer -> session.status_idle."""
    from tests.live_fixtures import until_idle
    from tests.model_server import text, tool_call

    model.push(tool_call("bash", {"command": command}), text("done"))
    with client.beta.sessions.events.stream(session_id) as stream:
        started = time.perf_counter()
        client.beta.sessions.events.send(
            session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": "go"}]}]
        )
        events = until_idle(stream)
        elapsed = time.perf_counter() - started
    result = next(e for e in events if e.type == "agent.tool_result")
    if result.is_error:
        raise RuntimeError(f"the bash call failed: {result.content}")
    return elapsed


def many_files() -> dict[str, Any]:
    """Turn time with one bash call in a session whose workspace holds 20,000 files, against a session with
    an empty workspace in the same server (the baseline), for the kernel quota (the default where the worker
    is root) and for the walking watcher (GALLEY_SANDBOX_QUOTA=watch; what every call paid before)."""
    from tests.live import live_galley
    from tests.model_server import scripted_model

    figures: dict[str, Any] = {"files": MANY_FILES, "turns": FILE_TURNS}
    with scripted_model() as model:
        for mode in ("auto", "watch"):
            env = {
                "ANTHROPIC_API_KEY": "sk-test",
                "ANTHROPIC_BASE_URL": model.base_url,
                "GALLEY_SANDBOX_QUOTA": mode,
            }
            with live_galley(env) as galley:
                client = galley.client()
                agent = client.beta.agents.create(
                    name="bench", model="claude-sonnet-4-6", tools=[{"type": "agent_toolset_20260401"}]
                )
                environment = client.beta.environments.create(name=f"bench-files-{mode}")
                empty = client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id
                full = client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id
                _turn_seconds(client, model, empty, "true")
                _turn_seconds(
                    client,
                    model,
                    full,
                    f"mkdir -p many && cd many && seq {MANY_FILES} | xargs touch && cd ..",
                )
                count = _count(client, model, full)
                if count != MANY_FILES:
                    raise RuntimeError(f"expected {MANY_FILES} files, found {count}")
                base: list[float] = []
                loaded: list[float] = []
                for _ in range(FILE_TURNS):  # interleaved, so load on the machine hits both alike
                    base.append(_turn_seconds(client, model, empty, "echo hi"))
                    loaded.append(_turn_seconds(client, model, full, "echo hi"))
                name = "kernel" if mode == "auto" else "watch"
                figures[f"{name}_empty_p50_ms"] = round(_pct(base, 0.5) * 1000, 2)
                figures[f"{name}_20k_p50_ms"] = round(_pct(loaded, 0.5) * 1000, 2)
                figures[f"{name}_added_p50_ms"] = round((_pct(loaded, 0.5) - _pct(base, 0.5)) * 1000, 2)
    print("\n| bash turn (send -> idle), p50 | empty workspace | 20,000 files | added |")
    print("|---|---|---|---|")
    for name, label in (("kernel", "kernel quota (image)"), ("watch", "walking watcher")):
        print(
            f"| {label} | {figures[name + '_empty_p50_ms']} ms | {figures[name + '_20k_p50_ms']} ms | "
            f"{figures[name + '_added_p50_ms']} ms |"
        )
    return figures


def _count(client: Any, model: Any, session_id: str) -> int:
    from tests.live_fixtures import until_idle
    from tests.model_server import text, tool_call

    model.push(tool_call("bash", {"command": "ls many | wc -l"}), text("done"))
    with client.beta.sessions.events.stream(session_id) as stream:
        client.beta.sessions.events.send(
            session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": "count"}]}]
        )
        events = until_idle(stream)
    result = next(e for e in events if e.type == "agent.tool_result")
    return int(result.content[0].text.strip())


if __name__ == "__main__":
    import json

    figures = {"sandbox": main(), "many_files": many_files()}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(figures, indent=2) + "\n")
