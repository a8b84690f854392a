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

NEW_KEY = "galley_new_api_key"  # the raw key, kept in the login session for one page view


@console_view(Role.ADMIN)
def api_keys(request: HttpRequest) -> HttpResponse:
    workspace = request.access.workspace  # type: ignore[attr-defined]
    errors: dict[str, str] = {}
    if request.method == "POST":
        name = request.POST.get("name", "").strip()
        if not name:
            errors["name"] = "Give the key a name, for example the app or person that will use it."
        elif len(name) > 255:
            errors["name"] = "The name is too long (255 characters at most)."
        else:
            # POST-redirect-GET: reloading the page after this shows the list, it never makes a
            # second key. The raw key is shown once, on the page the redirect lands on.
            key, raw = ApiKey.generate(workspace=workspace, name=name, created_by=request.user)
            request.session[NEW_KEY] = {"id": key.pk, "raw": raw}
            return HttpResponseRedirect("/api-keys")
    shown = request.session.pop(NEW_KEY, None) if request.method == "GET" else None
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
            "raw_key": shown["raw"] if shown else None,
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


def _member(request: HttpRequest, membership_id: int) -> Membership:
    workspace = request.access.workspace  # type: ignore[attr-defined]
    membership = (
        Membership.objects.filter(pk=membership_id, workspace=workspace).select_related("user").first()
    )
    if membership is None:
        raise Http404("No such member")
    return membership


def _is_last_admin(membership: Membership) -> bool:
    """Under a lock on the workspace's admin rows: the last active admin must stay, or nobody could
    manage keys and users again."""
    if membership.role != Role.ADMIN:
        return False
    admins = Membership.objects.select_for_update().filter(
        workspace=membership.workspace, role=Role.ADMIN, user__is_active=True
    )
    return admins.count() <= 1 and membership.user.is_active


@require_POST
@console_view(Role.ADMIN)
def user_active(request: HttpRequest, membership_id: int) -> HttpResponse:
    """Deactivate (no more logins; their sessions and keys stay) or reactivate a user."""
    membership = _member(request, membership_id)
    active = request.POST.get("active") == "1"
    with transaction.atomic():
        if not active and _is_last_admin(membership):
            messages.error(request, "This is the last admin; make someone else an admin first.")
            return HttpResponseRedirect("/users")
        if not active and membership.user_id == request.user.pk:
            messages.error(request, "You cannot deactivate your own account.")
            return HttpResponseRedirect("/users")
        get_user_model().objects.filter(pk=membership.user_id).update(is_active=active)
    if not active:
        from django.contrib.sessions.models import Session as LoginSession

        # Log them out everywhere: a deactivated user's open pages stop working at once.
        for login in LoginSession.objects.all().iterator():
            if str(login.get_decoded().get("_auth_user_id")) == str(membership.user_id):
                login.delete()
    verb = "reactivated" if active else "deactivated; they can no longer log in"
    messages.success(request, f"{membership.user.username} {verb}.")
    return HttpResponseRedirect("/users")


@require_POST
@console_view(Role.ADMIN)
def user_remove(request: HttpRequest, membership_id: int) -> HttpResponse:
    """Remove a user from this workspace (their account stays for other workspaces)."""
    membership = _member(request, membership_id)
    with transaction.atomic():
        if _is_last_admin(membership):
            messages.error(request, "This is the last admin; make someone else an admin first.")
            return HttpResponseRedirect("/users")
        if membership.user_id == request.user.pk:
            messages.error(request, "You cannot remove yourself.")
            return HttpResponseRedirect("/users")
        Membership.objects.filter(pk=membership.pk).delete()
    messages.success(request, f"{membership.user.username} was removed from this workspace.")
    return HttpResponseRedirect("/users")


@require_POST
@console_view(Role.ADMIN)
def user_password(request: HttpRequest, membership_id: int) -> HttpResponse:
    """Set a new password for a user (they are told it out of band)."""
    membership = _member(request, membership_id)
    password = request.POST.get("password", "")
    try:
        validate_password(password, user=membership.user)
    except ValidationError as exc:
        messages.error(
            request, f"Password for {membership.user.username} not changed: {' '.join(exc.messages)}"
        )
        return HttpResponseRedirect("/users")
    membership.user.set_password(password)
    membership.user.save(update_fields=["password"])
    messages.success(request, f"New password set for {membership.user.username}.")
    return HttpResponseRedirect("/users")
