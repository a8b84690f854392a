"""Who may do what in the console. Every view goes through `console_view`, which checks the login,
the membership and the role on the server, whatever the page shows or hides."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.template.loader import render_to_string

from accounts.models import Membership, Role, Workspace

_RANK = {Role.VIEWER: 0, Role.EDITOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Access:
    membership: Membership

    @property
    def workspace(self) -> Workspace:
        return self.membership.workspace

    @property
    def role(self) -> str:
        return self.membership.role

    def allows(self, role: str) -> bool:
        return _RANK[Role(self.role)] >= _RANK[Role(role)]

    @property
    def can_edit(self) -> bool:
        return self.allows(Role.EDITOR)

    @property
    def is_admin(self) -> bool:
        return self.allows(Role.ADMIN)


def access_for(user: Any) -> Access | None:
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    membership = (
        Membership.objects.select_related("workspace").filter(user=user).order_by("created_at", "id").first()
    )
    if membership is None and user.is_superuser:
        # `manage.py createsuperuser` makes no membership: such an account administers the default
        # workspace rather than meeting a dead end.
        from accounts.services import workspace_get_default

        membership, _ = Membership.objects.select_related("workspace").get_or_create(
            user=user, workspace=workspace_get_default(), defaults={"role": Role.ADMIN}
        )
    return Access(membership) if membership is not None else None


def forbidden(request: HttpRequest, message: str) -> HttpResponse:
    html = render_to_string("console/forbidden.html", {"message": message}, request=request)
    return HttpResponseForbidden(html)


def console_view(
    role: str = Role.VIEWER,
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Require a logged-in member with at least `role`; sets request.access."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path(), settings.LOGIN_URL)
            access = access_for(request.user)
            if access is None:
                return forbidden(
                    request, "Your account is not a member of any workspace. Ask an admin to add you."
                )
            request.access = access  # type: ignore[attr-defined]
            if not access.allows(role):
                return forbidden(
                    request, f"This needs the {Role(role).label.lower()} role; you are a {access.role}."
                )
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def _any_provider() -> bool:
    from providers.models import ModelProvider

    return bool(getattr(settings, "GALLEY_PROVIDERS", None)) or ModelProvider.objects.exists()


def render_page(
    request: HttpRequest, template: str, context: dict[str, Any] | None = None, *, status: int = 200
) -> HttpResponse:
    """Render a console page with the layout's context: the access and whether a model provider is set."""
    access = getattr(request, "access", None)
    full: dict[str, Any] = {
        "access": access,
        "model_provider_missing": not settings.ANTHROPIC_API_KEY and not _any_provider(),
    }
    full.update(context or {})
    errors = full.get("errors")
    if isinstance(errors, dict) and errors:
        # A failed form: the layout lists every message at the top, each linked to its field.
        full["error_summary"] = list(errors.items())
    if access is not None and not request.headers.get("HX-Request"):
        from costs.services import budget_status

        full["budget_status"] = budget_status(workspace=access.workspace)
    response = HttpResponse(render_to_string(template, full, request=request), status=status)
    response["Vary"] = "HX-Request"
    return response
