"""Run every benchmark module in its own process (each sets up its own Django data dir) and
collect the JSON results each writes to var/bench/<name>.json."""

import json
import subprocess
import sys
import time
from pathlib import Path

# Other parts append their modules here (e.g. "bench.sandbox", "bench.console").
BENCHMARKS = ["bench.harness", "bench.sandbox", "bench.console"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "var" / "bench"


def main(names: list[str]) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in names or BENCHMARKS:
        started = time.monotonic()
        print(f"== {name}", flush=True)
        proc = subprocess.run([sys.executable, "-m", name], cwd=ROOT, timeout=1800)
        print(f"== {name}: exit {proc.returncode} in {time.monotonic() - started:.1f}s", flush=True)
        failed += proc.returncode != 0
    for path in sorted(RESULTS.glob("*.json")):
        print(f"-- {path.name}")
        print(json.dumps(json.loads(path.read_text()), indent=2))
    subprocess.run([sys.executable, "-m", "bench.report"], cwd=ROOT)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
