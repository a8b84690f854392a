"""Print the targets table of docs/benchmarks.md from var/bench/harness.json and sandbox.json (run
last by `make bench`; paste its output into the doc with the run's date and load)."""

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent.parent / "var" / "bench"


def _load(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    return f"{value}{unit}"


def _ratio(value: Any, base: Any) -> str:
    if not value or not base:
        return "–"
    return f"{value / base:.1f}x"


def rows() -> list[tuple[str, str, list[str]]]:
    harness = _load("harness")
    sandbox = _load("sandbox").get("sandbox", {})  # its figures in ms (bench/sandbox.py)
    configs = harness.get("configs", {})
    names = list(configs)
    bare = _get(harness, "bare_client", "text_turn", "p50_ms")
    out: list[tuple[str, str, list[str]]] = []

    def per_config(fn: Any) -> list[str]:
        return [fn(configs[name]) for name in names]

    out.append(("bare client text turn, p50", "(baseline)", [_fmt(bare, " ms")] * len(names)))
    out.append(
        (
            "text turn send → idle, p50 (ratio to bare)",
            "≤ 4x bare",
            per_config(
                lambda c: (
                    f"{_fmt(_get(c, 'text_turn', 'send_to_idle', 'p50_ms'), ' ms')}"
                    f" ({_ratio(_get(c, 'text_turn', 'send_to_idle', 'p50_ms'), bare)})"
                )
            ),
        )
    )
    out.append(
        (
            "the new server's first text turn",
            "",
            per_config(lambda c: _fmt(_get(c, "text_turn", "first_turn_ms"), " ms")),
        )
    )
    out.append(
        (
            "send → model receives the request, p50",
            "< 8 ms",
            per_config(lambda c: _fmt(_get(c, "text_turn", "send_to_model_request", "p50_ms"), " ms")),
        )
    )
    out.append(
        (
            "tool turn (one bash call) send → idle, p50 / bare",
            "–",
            per_config(
                lambda c: (
                    f"{_fmt(_get(c, 'tool_turn', 'send_to_idle', 'p50_ms'), ' ms')} / "
                    f"{_fmt(_get(harness, 'bare_client', 'tool_turn', 'p50_ms'), ' ms')}"
                )
            ),
        )
    )
    for size in (100, 1000):
        key = f"burst_{size}"
        out.append(
            (
                f"{size} sends at once: all accepted",
                "< 0.5 s" if size == 100 else "–",
                per_config(lambda c, k=key: _fmt(_get(c, k, "all_accepted_s"), " s")),
            )
        )
        out.append(
            (
                f"{size} sessions, 1 s model: all idle",
                "< 15 s (pg-4)" if size == 1000 else "–",
                per_config(lambda c, k=key: _fmt(_get(c, k, "all_idle_s"), " s")),
            )
        )
        out.append(
            (
                f"{size} sessions: exact logs / 5xx or failed sends",
                "all / 0",
                per_config(
                    lambda c, k=key: (
                        f"{_fmt(_get(c, k, 'sessions_with_exact_log'))}/{_fmt(_get(c, k, 'sessions'))}"
                        f" / {_fmt(_get(c, k, 'send_failures'))}"
                    )
                ),
            )
        )
        out.append(
            (
                f"{size} sessions: server CPU / peak RSS",
                "–",
                per_config(
                    lambda c, k=key: (
                        f"{_fmt(_get(c, k, 'server_cpu_s'), ' s')} / "
                        f"{_fmt(_get(c, k, 'server_peak_rss_mb'), ' MB')}"
                    )
                ),
            )
        )
        out.append(
            (
                f"{size} sessions: model requests in flight, peak / median",
                "–",
                per_config(
                    lambda c, k=key: (
                        f"{_fmt(_get(c, k, 'model_in_flight_peak'))} / "
                        f"{_fmt(_get(c, k, 'model_in_flight_median'))}"
                    )
                ),
            )
        )
    out.append(
        (
            "worker CPU per model call (text turns / 1,000 burst)",
            "≤ 3 ms",
            per_config(
                lambda c: (
                    f"{_fmt(_get(c, 'text_turn', 'worker_cpu_ms_per_model_call'), ' ms')} / "
                    f"{_fmt(_get(c, 'burst_1000', 'worker_cpu_ms_per_model_call'), ' ms')}"
                )
            ),
        )
    )
    out.append(
        (
            "cold first tool call, default networking: tool_use → tool_result on the stream, p50 (warm)",
            "< 25 ms",
            per_config(
                lambda c: (
                    f"{_fmt(_get(c, 'cold_tool_call', 'tool_use_to_tool_result', 'p50_ms'), ' ms')} "
                    f"({_fmt(_get(c, 'tool_turn', 'tool_use_to_tool_result', 'p50_ms'), ' ms')})"
                )
            ),
        )
    )
    out.append(
        (
            "the same, the model's first byte after 0.3 s",
            "",
            per_config(
                lambda c: _fmt(
                    _get(c, "cold_tool_call_thinking_model", "tool_use_to_tool_result", "p50_ms"), " ms"
                )
            ),
        )
    )
    out.append(
        (
            "100 idle streams, server CPU",
            "< 1% of a core",
            per_config(lambda c: _fmt(_get(c, "idle_streams_100", "server_cpu_percent_of_one_core"), " %")),
        )
    )
    if sandbox:
        cold = f"{sandbox.get('cold_start_p50')} ms (p95 {sandbox.get('cold_start_p95')} ms)"
        over = (
            f"< {sandbox.get('overhead_bound_p50')} ms (the whole call; "
            f"{sandbox.get('ratio_to_plain_shell_p50')}x the plain shell)"
        )
        out.append(
            ("of which the sandbox's start and call (in-process, bench/sandbox.py)", "", [cold] * len(names))
        )
        out.append(("bash overhead against a warm unsandboxed shell", "< 2 ms", [over] * len(names)))
    return out


def main() -> int:
    harness = _load("harness")
    names = list(harness.get("configs", {}))
    if not names:
        print("no var/bench/harness.json yet", file=sys.stderr)
        return 1
    print(f"Run of {harness.get('when')}, load average {harness.get('load_average_at_start')} at start.\n")
    print("| figure | target | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for label, target, values in rows():
        print(f"| {label} | {target} | " + " | ".join(values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
