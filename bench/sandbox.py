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
        for i in range(COLD_STARTS):
            live = _live(f"bench_cold_{i}")
            from sessions.sandbox.services import sandbox_provision

            sandbox_provision(root=live.spec.root, uid=live.spec.uid)
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
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
