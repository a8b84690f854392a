"""Cost analytics over sessions. The session row is the rollup: the harness keeps its token
counters, priced cost and running time up to date, so a report reads one row per session instead
of every model-request event."""

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db.models import Sum
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from accounts.models import Workspace
from harness import pricing
from sessions.models import Session

GROUPS = {
    "day": "Day",
    "agent": "Agent",
    "model": "Model",
    "environment": "Environment",
    "api_key": "API key",
    "user": "User",
    "provider": "Provider (per model call)",
    "provider_model": "Provider / model / agent (per model call)",
}

NO_USER = "No recorded user (a key without an owner, or a deployment)"

_SUMS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
    "web_search_requests",
    "token_cost_micros",
    "active_seconds",
)


@dataclass
class Totals:
    sessions: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_tokens: int = 0
    web_search_requests: int = 0
    token_cost_micros: int = 0
    active_seconds: float = 0.0

    @property
    def runtime_hours(self) -> float:
        return self.active_seconds / 3600

    @property
    def cost_micros(self) -> int:
        return pricing.total_cost_micros(
            token_cost_micros=self.token_cost_micros,
            active_seconds=self.active_seconds,
            web_search_requests=self.web_search_requests,
        )

    @property
    def all_tokens(self) -> int:
        prompt = self.input_tokens + self.cache_read_input_tokens + self.cache_creation_tokens
        return prompt + self.output_tokens

    @property
    def cache_hit_ratio(self) -> float:
        prompt = self.input_tokens + self.cache_read_input_tokens + self.cache_creation_tokens
        return self.cache_read_input_tokens / prompt if prompt else 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.sessions += int(row.get("n") or 0)
        self.input_tokens += int(row.get("input_tokens") or 0)
        self.output_tokens += int(row.get("output_tokens") or 0)
        self.cache_read_input_tokens += int(row.get("cache_read_input_tokens") or 0)
        self.cache_creation_tokens += int(row.get("cache_creation_5m_tokens") or 0) + int(
            row.get("cache_creation_1h_tokens") or 0
        )
        self.web_search_requests += int(row.get("web_search_requests") or 0)
        self.token_cost_micros += int(row.get("token_cost_micros") or 0)
        self.active_seconds += float(row.get("active_seconds") or 0.0)


@dataclass
class Report:
    start: dt.date
    end: dt.date
    group: str
    total: Totals = field(default_factory=Totals)
    rows: list[tuple[str, Totals]] = field(default_factory=list)
    top_sessions: list[Session] = field(default_factory=list)
    latency: list[tuple[str, float, int]] = field(default_factory=list)  # (day, mean seconds, requests)


def _sums() -> dict[str, Any]:
    from django.db.models import Count

    aggregates: dict[str, Any] = {name: Sum(name) for name in _SUMS}
    aggregates["n"] = Count("id")
    return aggregates


def sessions_in_range(workspace: Workspace, start: dt.date, end: dt.date) -> Any:
    tz = dt.UTC
    lo = dt.datetime.combine(start, dt.time.min, tzinfo=tz)
    hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time.min, tzinfo=tz)
    return Session.objects.filter(workspace=workspace, created_at__gte=lo, created_at__lt=hi)


def report_build(*, workspace: Workspace, start: dt.date, end: dt.date, group: str) -> Report:
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}")
    qs = sessions_in_range(workspace, start, end)
    report = Report(start=start, end=end, group=group)
    report.total.add(qs.aggregate(**_sums()))
    if group == "day":
        by_day: dict[str, Totals] = {}
        for row in qs.annotate(day=TruncDate("created_at")).values("day").annotate(**_sums()).order_by("day"):
            by_day.setdefault(str(row["day"]), Totals()).add(row)
        day = start
        while day <= end:  # every day appears, so the chart has no gaps
            report.rows.append((day.isoformat(), by_day.get(day.isoformat(), Totals())))
            day += dt.timedelta(days=1)
    elif group == "agent":
        per_agent = list(qs.values("agent_id", "agent__name").annotate(**_sums()).order_by("agent__name"))
        names = [str(row["agent__name"]) for row in per_agent]
        for row in per_agent:
            totals = Totals()
            totals.add(row)
            name = str(row["agent__name"])
            # Agents are named for people; the id only tells two agents of the same name apart.
            label = name if names.count(name) == 1 else f"{name} ({row['agent_id']})"
            report.rows.append((label, totals))
    elif group == "user":
        from django.db.models import F
        from django.db.models.functions import Coalesce

        # The console user who started the session, else the owner of the API key it came through.
        person = Coalesce(F("starter__user__username"), F("api_key__created_by__username"))
        people = qs.annotate(person=person)
        for row in people.values("person").annotate(**_sums()).order_by("person"):
            totals = Totals()
            totals.add(row)
            report.rows.append((str(row["person"]) if row["person"] else NO_USER, totals))
    elif group == "environment":
        for row in (
            qs.values("environment_id", "environment__name").annotate(**_sums()).order_by("environment__name")
        ):
            totals = Totals()
            totals.add(row)
            report.rows.append((str(row["environment__name"]), totals))
    elif group == "api_key":
        for row in qs.values("api_key_id", "api_key__name").annotate(**_sums()).order_by("api_key__name"):
            totals = Totals()
            totals.add(row)
            report.rows.append((str(row["api_key__name"] or "Console (no API key)"), totals))
    elif group == "model":
        # The model sits in the session's agent snapshot (JSON); grouping by agent version in SQL
        # and mapping versions to models in Python keeps this portable across SQLite and PostgreSQL.
        from agents.models import AgentVersion

        per_version = list(qs.values("agent_id", "agent_version").annotate(**_sums()))
        keys = {(r["agent_id"], r["agent_version"]) for r in per_version}
        models: dict[tuple[str, int], str] = {}
        agent_ids = {k[0] for k in keys}
        for v in AgentVersion.objects.filter(agent_id__in=agent_ids).only(
            "agent_id", "version", "definition"
        ):
            models[(v.agent_id, v.version)] = v.model_id
        by_model: dict[str, Totals] = {}
        for row in per_version:
            name = models.get((row["agent_id"], row["agent_version"]), "") or "unknown"
            by_model.setdefault(name, Totals()).add(row)
        report.rows = sorted(by_model.items())
    elif group in ("provider", "provider_model"):
        report.rows = _per_model_call(qs, by_model=group == "provider_model")
    report.top_sessions = list(qs.select_related("agent").order_by("-token_cost_micros", "-created_at")[:10])
    report.latency = latency_by_day(qs, start, end)
    return report


def latency_by_day(sessions: Any, start: dt.date, end: dt.date) -> list[tuple[str, float, int]]:
    """Mean model request latency per day (start to end of each `span.model_request_end`'s span,
    the coordinator's, its children's and the grader's alike), every day of the range present."""
    from sessions.models import Event

    ids = sessions.values("id")
    starts = dict(
        Event.objects.filter(session__in=ids, type="span.model_request_start").values_list("id", "created_at")
    )
    per_day: dict[str, list[float]] = {}
    for start_id, ended in (
        Event.objects.filter(session__in=ids, type="span.model_request_end")
        .values_list("payload__model_request_start_id", "created_at")
        .iterator()
    ):
        began = starts.get(str(start_id))
        if began is None:
            continue
        began_on = began.astimezone(dt.UTC).date().isoformat()
        per_day.setdefault(began_on, []).append(max(0.0, (ended - began).total_seconds()))
    out: list[tuple[str, float, int]] = []
    day = start
    while day <= end:
        values = per_day.get(day.isoformat(), [])
        out.append((day.isoformat(), sum(values) / len(values) if values else 0.0, len(values)))
        day += dt.timedelta(days=1)
    return out


def _per_model_call(sessions: Any, *, by_model: bool) -> list[tuple[str, Totals]]:
    """Rows from the ledger of model calls: a team's members each count under their own provider,
    model and agent (a session row only knows the coordinator's model)."""
    from django.db.models import Count, F, Value
    from django.db.models.functions import Coalesce, NullIf

    from providers.models import ModelCall

    calls = ModelCall.objects.filter(session__in=sessions.values("id"))
    keys = ["provider"]
    if by_model:
        calls = calls.annotate(agent=Coalesce(NullIf(F("agent_name"), Value("")), F("session__agent__name")))
        keys += ["model", "agent"]
    rows: list[tuple[str, Totals]] = []
    for row in calls.values(*keys).annotate(
        n=Count("session_id", distinct=True),
        input_tokens=Sum("input_tokens"),
        output_tokens=Sum("output_tokens"),
        cache_read_input_tokens=Sum("cache_read_input_tokens"),
        cache_creation_5m_tokens=Sum("cache_creation_input_tokens"),
        token_cost_micros=Sum("cost_micros"),
    ).order_by(*keys):
        totals = Totals()
        totals.add(row)
        rows.append((" / ".join(str(row[k]) for k in keys), totals))
    return rows


def spend_since(workspace: Workspace, since: dt.datetime) -> int:
    totals = Totals()
    totals.add(Session.objects.filter(workspace=workspace, created_at__gte=since).aggregate(**_sums()))
    return totals.cost_micros


def today_start() -> dt.datetime:
    now = timezone.now()
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def usd(micros: int | float) -> str:
    """Money as people read it in a report: always two decimals and thousands separators, so a
    column lines up; a positive amount under half a cent reads "<$0.01", never "$0.00"."""
    cents = (Decimal(int(micros)) / Decimal(10_000)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    if cents == 0 and micros > 0:
        return "<$0.01"
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) / 100:,.2f}"


def usd_tick(top_micros: int) -> Callable[[float], str]:
    """The spend axis's ticks (in dollars): cents as in the report, unless the tallest bar is under
    ten cents, where cents would label $0.0079 as "$0.01" and its half as "<$0.01"."""
    if top_micros >= 100_000:
        return lambda v: usd(v * 1_000_000)
    return lambda v: f"${v:.4f}"


def thousands(value: int | float) -> str:
    return f"{int(value):,}"


def compact(value: float) -> str:
    """An axis tick for counts: 950, 12.5k, 1.24M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def seconds(value: float) -> str:
    return f"{value:,.2f} s"


def _short(label: str, limit: int) -> str:
    """A bar's label as it fits under the bar: a day as "2 Nov", anything else cut with an ellipsis."""
    try:
        day = dt.date.fromisoformat(label)
    except ValueError:
        return label if len(label) <= limit else label[: max(1, limit - 1)] + "…"
    return f"{day.day} {day:%b}"


def bar_chart(
    points: list[tuple[str, float]],
    *,
    label: str,
    unit: str,
    fmt: Callable[[float], str],
    tick: Callable[[float], str] | None = None,
) -> SafeString:
    """An inline SVG bar chart (no script, works offline). `label` is the chart's accessible name,
    `unit` the y axis title, `fmt` formats each bar's tooltip and `tick` the axis ticks (`fmt`)."""
    width, height, left, bottom, top_pad = 720, 240, 96, 40, 24
    tick = tick or fmt
    if not points:
        return mark_safe("")
    top = max((v for _k, v in points), default=0) or 1
    plot_h = height - bottom - top_pad
    slot = (width - left) / len(points)
    bar = max(1.0, slot * 0.7)
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">']
    parts.append(f'<text class="axis-unit" x="4" y="12">{escape(unit)}</text>')
    for fraction in (0, 0.5, 1):
        y = height - bottom - plot_h * fraction
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width}" y2="{y:.1f}"/>')
        mark = escape(tick(top * fraction))
        parts.append(f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{mark}</text>')
    # Every label when they fit, else every n-th; each cut to its slot with the full text in the tooltip.
    per_label = 8.5  # user units per character at the chart's 14px font
    step = max(1, math.ceil(len(points) / 10)) if len(points) > 12 else 1
    chars = max(3, int(slot * step / per_label) - 1)
    for i, (key, value) in enumerate(points):
        h = plot_h * (value / top)
        x = left + i * slot + (slot - bar) / 2
        y = height - bottom - h
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}">'
            f"<title>{escape(key)}: {escape(fmt(value))}</title></rect>"
        )
        if i % step == 0:
            cx = left + i * slot + slot / 2
            parts.append(
                f"<g><title>{escape(key)}</title>"
                f'<text class="label" x="{cx:.1f}" y="{height - bottom + 16}" text-anchor="middle">'
                f"{escape(_short(key, chars))}</text></g>"
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def dollars(micros: int) -> float:
    return float(Decimal(micros) / Decimal(1_000_000))
