from django.contrib.auth import get_user_model
from django.db import transaction

from accounts.models import ApiKey, Membership, Role, Workspace

DEFAULT_WORKSPACE_NAME = "Default"


def workspace_get_default() -> Workspace:
    """The first workspace, created on demand: a single-tenant install needs no setup."""
    workspace = Workspace.objects.order_by("created_at").first()
    if workspace is None:
        workspace = Workspace.objects.create(name=DEFAULT_WORKSPACE_NAME)
    return workspace


def api_key_create(
    *, name: str, workspace: Workspace | None = None, created_by: object = None
) -> tuple[ApiKey, str]:
    return ApiKey.generate(workspace=workspace or workspace_get_default(), name=name, created_by=created_by)


@transaction.atomic
def user_create(*, username: str, password: str, role: str = Role.VIEWER, workspace: Workspace | None = None):  # type: ignore[no-untyped-def]
    user = get_user_model().objects.create_user(username=username, password=password)
    Membership.objects.create(user=user, workspace=workspace or workspace_get_default(), role=role)
    return user
