import csv
import datetime as dt
from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.models import Role
from api.errors import ApiError
from console.access import console_view, render_page
from console.analytics import (
    GROUPS,
    Report,
    bar_chart,
    compact,
    dollars,
    report_build,
    seconds,
    thousands,
    usd,
    usd_tick,
)
from console.forms import error_field

PRESETS = {"7d": "Last 7 days", "30d": "Last 30 days", "mtd": "Month to date"}


def _range(request: HttpRequest, errors: dict[str, str]) -> tuple[dt.date, dt.date, str]:
    """The report's dates: a preset, or from/to (default the last 30 days). Every bad value is a
    message in `errors` under the name of its field."""
    today = timezone.now().date()
    preset = request.GET.get("preset", "")
    if preset:
        if preset not in PRESETS:
            errors["preset"] = f"Unknown range {preset!r}; choose one of: {', '.join(PRESETS.values())}."
        else:
            days = {"7d": 6, "30d": 29}.get(preset)
            start = today - dt.timedelta(days=days) if days is not None else today.replace(day=1)
            return start, today, preset
    try:
        end = dt.date.fromisoformat(request.GET["to"]) if request.GET.get("to") else today
    except ValueError:
        errors["to"] = "The end date is not a date (use YYYY-MM-DD)."
        end = today
    try:
        start = (
            dt.date.fromisoformat(request.GET["from"])
            if request.GET.get("from")
            else end - dt.timedelta(days=29)
        )
    except ValueError:
        errors["from"] = "The start date is not a date (use YYYY-MM-DD)."
        start = end - dt.timedelta(days=29)
    if start > end:
        errors["from"] = "The start date is after the end date; showing the 30 days before the end date."
        start = end - dt.timedelta(days=29)
    if (end - start).days > 366:
        errors["from"] = "Ranges are limited to one year; showing the last year of the range."
        start = end - dt.timedelta(days=366)
    return start, end, ""


def _report(request: HttpRequest) -> tuple[Report | None, dict[str, Any], dict[str, str]]:
    errors: dict[str, str] = {}
    start, end, preset = _range(request, errors)
    group = request.GET.get("group", "day")
    if group not in GROUPS:
        # Never a silent default: a report grouped otherwise than asked would be read as the answer.
        errors["group"] = f"Unknown grouping {group!r}; choose one of: {', '.join(GROUPS.values())}."
        report = None
    else:
        report = report_build(workspace=request.access.workspace, start=start, end=end, group=group)  # type: ignore[attr-defined]
    return report, {"start": start, "end": end, "preset": preset, "group": group}, errors


def _budget_context(request: HttpRequest) -> dict[str, Any]:
    """The budget form's values (the month's progress, `budget_status`, comes with every page)."""
    from costs.services import budget_get

    return {"budget": budget_get(workspace=request.access.workspace)}  # type: ignore[attr-defined]


def _page(
    request: HttpRequest, *, budget_errors: dict[str, str] | None = None, budget_form: Any = None
) -> HttpResponse:
    report, asked, errors = _report(request)
    errors.update(budget_errors or {})
    context: dict[str, Any] = {
        "nav": "analytics",
        "report": report,
        "asked": asked,
        "errors": errors,
        "groups": GROUPS,
        "presets": PRESETS,
        "query": request.GET.urlencode(),
        "budget_form": budget_form,
        **_budget_context(request),
    }
    if report is not None:
        by = GROUPS[report.group].lower()
        context.update(
            {
                "spend_chart": bar_chart(
                    [(key, dollars(t.cost_micros)) for key, t in report.rows],
                    label=f"Spend in US dollars by {by}",
                    unit="USD",
                    fmt=lambda v: usd(v * 1_000_000),
                    tick=usd_tick(max((t.cost_micros for _key, t in report.rows), default=0)),
                ),
                "token_chart": bar_chart(
                    [(key, float(t.all_tokens)) for key, t in report.rows],
                    label=f"Tokens (input, cache and output) by {by}",
                    unit="tokens",
                    fmt=thousands,
                    tick=compact,
                ),
                "latency_chart": bar_chart(
                    [(day, mean) for day, mean, _n in report.latency],
                    label="Mean model request latency in seconds by day",
                    unit="seconds",
                    fmt=seconds,
                ),
                "model_requests": sum(n for _day, _mean, n in report.latency),
                # The charts show every day of the range; the table only days with sessions.
                "rows": [{"key": key, "t": t} for key, t in report.rows if t.sessions],
                "group_label": GROUPS[report.group],
                "ratio": f"{report.total.cache_hit_ratio:.1%}",
            }
        )
    return render_page(request, "console/analytics.html", context, status=400 if errors else 200)


@console_view()
def analytics(request: HttpRequest) -> HttpResponse:
    return _page(request)


@require_POST
@console_view(Role.ADMIN)
def analytics_budgets(request: HttpRequest) -> HttpResponse:
    from costs.services import budget_set

    try:
        with transaction.atomic():
            budget_set(
                workspace=request.access.workspace,  # type: ignore[attr-defined]
                monthly_usd=request.POST.get("monthly", ""),
                session_usd=request.POST.get("session", ""),
                warn_percent=request.POST.get("warn_percent", ""),
                user=request.user,
            )
    except ApiError as exc:
        field, message = error_field(exc)
        text = message.split(": ", 1)[-1]  # the field is named by where the message sits
        return _page(
            request, budget_errors={f"budget_{field}": text[:1].upper() + text[1:]}, budget_form=request.POST
        )
    messages.success(request, "Budgets saved.")
    return HttpResponseRedirect("/analytics#budgets")


@console_view()
def analytics_csv(request: HttpRequest) -> HttpResponse:
    report, _asked, errors = _report(request)
    if report is None or errors:
        return HttpResponse(
            "\n".join(f"{k}: {v}" for k, v in errors.items()), status=400, content_type="text/plain"
        )
    response = HttpResponse(content_type="text/csv")
    response["Content-Disposition"] = (
        f'attachment; filename="galley-cost-{report.start}-{report.end}-{report.group}.csv"'
    )
    writer = csv.writer(response)
    writer.writerow(
        [
            report.group,
            "sessions",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "cache_hit_ratio",
            "runtime_hours",
            "web_search_requests",
            "token_cost_usd",
            "total_cost_usd",
        ]
    )
    for key, t in report.rows:
        writer.writerow(
            [
                key,
                t.sessions,
                t.input_tokens,
                t.output_tokens,
                t.cache_read_input_tokens,
                t.cache_creation_tokens,
                f"{t.cache_hit_ratio:.4f}",
                f"{t.runtime_hours:.4f}",
                t.web_search_requests,
                f"{dollars(t.token_cost_micros):.6f}",
                f"{dollars(t.cost_micros):.6f}",
            ]
        )
    return response
