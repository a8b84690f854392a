"""Run every benchmark module in its own process (each sets up its own Django data dir) and
collect the JSON results each writes to var/bench/<name>.json."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Other parts append their modules here (e.g. "bench.sandbox", "bench.console").
BENCHMARKS = ["bench.harness", "bench.sandbox", "bench.console", "bench.burst", "bench.selfhosted"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "var" / "bench"


# Benchmarks measure the platform, not its rate limits (api/ratelimit.py): they run without them.
RATE_LIMITS_OFF = {
    name: "0"
    for name in (
        "GALLEY_RATE_LIMIT_CREATE_PER_MINUTE",
        "GALLEY_RATE_LIMIT_READ_PER_MINUTE",
        "GALLEY_RATE_LIMIT_WORKSPACE_CREATE_PER_MINUTE",
        "GALLEY_RATE_LIMIT_WORKSPACE_READ_PER_MINUTE",
        "GALLEY_AUTH_FAILURES_PER_MINUTE",
    )
}


def main(names: list[str]) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **RATE_LIMITS_OFF}
    failed = 0
    for name in names or BENCHMARKS:
        started = time.monotonic()
        print(f"== {name}", flush=True)
        proc = subprocess.run([sys.executable, "-m", name], cwd=ROOT, env=env, timeout=1800)
        print(f"== {name}: exit {proc.returncode} in {time.monotonic() - started:.1f}s", flush=True)
        failed += proc.returncode != 0
    for path in sorted(RESULTS.glob("*.json")):
        print(f"-- {path.name}")
        print(json.dumps(json.loads(path.read_text()), indent=2))
    subprocess.run([sys.executable, "-m", "bench.report"], cwd=ROOT)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
