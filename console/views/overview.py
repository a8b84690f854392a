import datetime as dt

from django.http import HttpRequest, HttpResponse

from console.access import console_view, render_page
from console.analytics import spend_since, today_start, usd
from console.timeline import with_costs
from sessions.models import Event, Session


@console_view()
def overview(request: HttpRequest) -> HttpResponse:
    workspace = request.access.workspace  # type: ignore[attr-defined]
    sessions = Session.objects.filter(workspace=workspace, archived_at=None).select_related("agent")
    running = list(
        sessions.filter(status__in=["running", "rescheduling"]).order_by("-created_at", "-id")[:10]
    )
    recent = list(sessions.order_by("-created_at", "-id")[:10])
    errors = list(
        Event.objects.filter(type="session.error", session__workspace=workspace)
        .select_related("session")
        .order_by("-created_at")[:5]
    )
    start = today_start()
    context = {
        "nav": "overview",
        "running": with_costs(running),
        "recent": with_costs(recent),
        "errors": errors,
        "spend_today": usd(spend_since(workspace, start)),
        "spend_week": usd(spend_since(workspace, start - dt.timedelta(days=6))),
        "has_agents": workspace.agents.exists(),
    }
    return render_page(request, "console/overview.html", context)
