import csv
import datetime as dt

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from console.access import console_view, render_page
from console.analytics import GROUPS, Report, bar_chart, dollars, report_build
from console.timeline import money


def _range(request: HttpRequest) -> tuple[dt.date, dt.date, list[str]]:
    today = timezone.now().date()
    errors: list[str] = []
    try:
        end = dt.date.fromisoformat(request.GET["to"]) if request.GET.get("to") else today
    except ValueError:
        errors.append("The end date is not a date (use YYYY-MM-DD).")
        end = today
    try:
        start = (
            dt.date.fromisoformat(request.GET["from"])
            if request.GET.get("from")
            else end - dt.timedelta(days=29)
        )
    except ValueError:
        errors.append("The start date is not a date (use YYYY-MM-DD).")
        start = end - dt.timedelta(days=29)
    if start > end:
        errors.append("The start date is after the end date; showing the 30 days before the end date.")
        start = end - dt.timedelta(days=29)
    if (end - start).days > 366:
        errors.append("Ranges are limited to one year; showing the last year of the range.")
        start = end - dt.timedelta(days=366)
    return start, end, errors


def _report(request: HttpRequest) -> tuple[Report, list[str]]:
    start, end, errors = _range(request)
    group = request.GET.get("group", "day")
    if group not in GROUPS:
        group = "day"
    return report_build(workspace=request.access.workspace, start=start, end=end, group=group), errors  # type: ignore[attr-defined]


@console_view()
def analytics(request: HttpRequest) -> HttpResponse:
    report, errors = _report(request)
    chart = bar_chart(
        [(key, dollars(t.cost_micros)) for key, t in report.rows],
        label=f"Spend in USD by {GROUPS[report.group].lower()}",
    )
    # The chart shows every day of the range; the table only days with sessions.
    rows = [{"key": key, "t": t, "cost": money(t.cost_micros)} for key, t in report.rows if t.sessions]
    top = [{"s": s, "cost": money(s.token_cost_micros)} for s in report.top_sessions]
    context = {
        "nav": "analytics",
        "report": report,
        "errors": errors,
        "chart": chart,
        "rows": rows,
        "top": top,
        "groups": GROUPS,
        "group_label": GROUPS[report.group],
        "total_cost": money(report.total.cost_micros),
        "query": request.GET.urlencode(),
        "ratio": f"{report.total.cache_hit_ratio:.1%}",
    }
    return render_page(request, "console/analytics.html", context)


@console_view()
def analytics_csv(request: HttpRequest) -> HttpResponse:
    report, _errors = _report(request)
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
