"""Admin pages for webhook endpoints: list and create, and one endpoint's delivery log with test,
redeliver, enable/disable and secret rotation. A signing secret is shown once, right after it is
made, and never again."""

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_POST

from accounts.models import Role
from api.errors import ApiError
from console.access import console_view, render_page
from console.forms import error_field
from webhooks import services
from webhooks.models import WebhookEndpoint


def _endpoint(request: HttpRequest, endpoint_id: str) -> WebhookEndpoint:
    try:
        return services.endpoint_get(workspace=request.access.workspace, endpoint_id=endpoint_id)  # type: ignore[attr-defined]
    except ApiError:
        raise Http404("No such webhook endpoint") from None


@console_view(Role.ADMIN)
def webhook_list(request: HttpRequest) -> HttpResponse:
    workspace = request.access.workspace  # type: ignore[attr-defined]
    errors: dict[str, str] = {}
    secret = None
    created = None
    form = {"url": "", "name": "", "events": ["session.status_idled"]}
    if request.method == "POST":
        events = request.POST.getlist("enabled_events")
        form = {
            "url": request.POST.get("url", "").strip(),
            "name": request.POST.get("name", "").strip(),
            "events": events,
        }
        try:
            created, secret = services.endpoint_create(
                workspace=workspace, body={"url": form["url"], "enabled_events": events, "name": form["name"]}
            )
        except ApiError as exc:
            field, message = error_field(exc)
            errors["enabled_events" if field.startswith("enabled_events") else field] = message
    endpoints, _ = services.endpoint_list(workspace=workspace, limit=100)
    return render_page(
        request,
        "console/webhook_list.html",
        {
            "nav": "webhooks",
            "endpoints": endpoints,
            "event_types": ["*", *services.EVENT_TYPES],
            "errors": errors,
            "form": form,
            "secret": secret,
            "created": created,
        },
        status=400 if errors else 200,
    )


@console_view(Role.ADMIN)
def webhook_detail(request: HttpRequest, endpoint_id: str) -> HttpResponse:
    endpoint = _endpoint(request, endpoint_id)
    return render_page(
        request,
        "console/webhook_detail.html",
        {
            "nav": "webhooks",
            "endpoint": endpoint,
            "deliveries": services.endpoint_deliveries(endpoint=endpoint),
            "secret": request.session.pop("webhook_secret_once", None),
        },
    )


@require_POST
@console_view(Role.ADMIN)
def webhook_action(request: HttpRequest, endpoint_id: str, action: str) -> HttpResponse:
    endpoint = _endpoint(request, endpoint_id)
    back = f"/webhooks/{endpoint.pk}"
    try:
        if action == "test":
            services.endpoint_send_test(endpoint=endpoint)
            messages.success(request, "Test event queued; it appears in the delivery log below.")
        elif action == "enable":
            services.endpoint_update(endpoint=endpoint, body={"state": "enabled"})
            messages.success(request, "Endpoint enabled; waiting deliveries resume.")
        elif action == "disable":
            services.endpoint_update(endpoint=endpoint, body={"state": "disabled"})
            messages.success(request, "Endpoint disabled; events that happen now are not delivered to it.")
        elif action == "rotate":
            # Kept in the session for exactly one page view, so a reload does not show it again.
            request.session["webhook_secret_once"] = services.endpoint_rotate_secret(endpoint=endpoint)
        elif action == "redeliver":
            delivery_id = request.POST.get("delivery", "")
            if not delivery_id.isdigit():
                raise Http404("No such delivery")
            services.delivery_redeliver(endpoint=endpoint, delivery_id=int(delivery_id))
            messages.success(request, "Redelivery queued with the same event id.")
        elif action == "delete":
            services.endpoint_delete(endpoint=endpoint)
            messages.success(request, "Endpoint deleted.")
            return HttpResponseRedirect("/webhooks")
        else:
            raise Http404("No such action")
    except ApiError as exc:
        messages.error(request, exc.message)
    return HttpResponseRedirect(back)
