"""Admin pages: API keys and users."""

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_POST

from accounts.models import ApiKey, Membership, Role
from accounts.services import user_create
from console.access import console_view, render_page


@console_view(Role.ADMIN)
def api_keys(request: HttpRequest) -> HttpResponse:
    workspace = request.access.workspace  # type: ignore[attr-defined]
    errors: dict[str, str] = {}
    raw_key = None
    if request.method == "POST":
        name = request.POST.get("name", "").strip()
        if not name:
            errors["name"] = "Give the key a name, for example the app or person that will use it."
        elif len(name) > 255:
            errors["name"] = "The name is too long (255 characters at most)."
        else:
            _key, raw_key = ApiKey.generate(workspace=workspace, name=name, created_by=request.user)
    keys = (
        ApiKey.objects.filter(workspace=workspace)
        .select_related("created_by")
        .order_by("revoked_at", "-created_at")
    )
    return render_page(
        request,
        "console/api_keys.html",
        {
            "nav": "api_keys",
            "keys": keys,
            "errors": errors,
            "raw_key": raw_key,
            "name": request.POST.get("name", ""),
        },
        status=400 if errors else 200,
    )


@require_POST
@console_view(Role.ADMIN)
def api_key_revoke(request: HttpRequest, key_id: str) -> HttpResponse:
    key = ApiKey.objects.filter(pk=key_id, workspace=request.access.workspace).first()  # type: ignore[attr-defined]
    if key is None:
        raise Http404("No such key")
    key.revoke()
    messages.success(request, f"Key {key.name!r} revoked; requests using it now fail.")
    return HttpResponseRedirect("/api-keys")


@console_view(Role.ADMIN)
def users(request: HttpRequest) -> HttpResponse:
    workspace = request.access.workspace  # type: ignore[attr-defined]
    errors: dict[str, str] = {}
    form = {"username": "", "role": Role.VIEWER}
    if request.method == "POST":
        username = request.POST.get("username", "").strip()
        password = request.POST.get("password", "")
        role = request.POST.get("role", "")
        form = {"username": username, "role": role}
        if not username:
            errors["username"] = "Enter a username."
        elif get_user_model().objects.filter(username=username).exists():
            errors["username"] = "That username is taken."
        if role not in Role.values:
            errors["role"] = "Choose a role."
        try:
            validate_password(password)
        except ValidationError as exc:
            errors["password"] = " ".join(exc.messages)
        if not errors:
            user_create(username=username, password=password, role=role, workspace=workspace)
            messages.success(request, f"User {username!r} created as {role}.")
            return HttpResponseRedirect("/users")
    members = Membership.objects.filter(workspace=workspace).select_related("user").order_by("user__username")
    return render_page(
        request,
        "console/users.html",
        {"nav": "users", "members": members, "errors": errors, "form": form, "roles": Role.choices},
        status=400 if errors else 200,
    )


@require_POST
@console_view(Role.ADMIN)
def user_role(request: HttpRequest, membership_id: int) -> HttpResponse:
    workspace = request.access.workspace  # type: ignore[attr-defined]
    role = request.POST.get("role", "")
    membership = (
        Membership.objects.filter(pk=membership_id, workspace=workspace).select_related("user").first()
    )
    if membership is None:
        raise Http404("No such member")
    if role not in Role.values:
        messages.error(request, "Choose a role.")
        return HttpResponseRedirect("/users")
    with transaction.atomic():
        if membership.role == Role.ADMIN and role != Role.ADMIN:
            # Keep at least one admin, or nobody could manage keys and users again.
            admins = Membership.objects.select_for_update().filter(workspace=workspace, role=Role.ADMIN)
            if admins.count() <= 1:
                messages.error(request, "This is the last admin; make someone else an admin first.")
                return HttpResponseRedirect("/users")
        Membership.objects.filter(pk=membership.pk).update(role=role)
    messages.success(request, f"{membership.user.username} is now {role}.")
    return HttpResponseRedirect("/users")
