"""Who may call what on behalf of a self-hosted worker (spec 1.4). The one place that decides it.

Two worker credentials, both sent as `Authorization: Bearer`:
- an **environment key** authorizes its environment's work routes and the session routes of
  sessions in that environment;
- a **sessions token** (inside a work item's `secret`) authorizes its item's heartbeat and stop
  and the routes of that one session, until the item stops or is handed to another worker.

Routes opt in with `auth=API_KEY_OR_WORKER` (or `API_KEY_OR_SESSIONS_TOKEN` for routes that must
reject the environment key, such as memory stores) and then call `check_session_access(request,
session)` once they have loaded the session, or `check_memory_store_access(request, store_id,
write=...)` for a memory store (only those attached to the token's session). Everything else keeps
the default API-key auth, so a worker credential is a 401 there.
"""

from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest
from ninja.security import HttpBearer

from accounts.models import Workspace
from agents.models import Environment
from api.errors import ApiError, not_found
from api.v1 import ApiKeyAuth
from memory.attachments import attachment_of
from selfhosted import services
from selfhosted.models import EnvironmentKey, WorkItem

ENVIRONMENT_KEY = "environment_key"
SESSIONS_TOKEN = "sessions_token"


@dataclass(frozen=True)
class WorkerScope:
    kind: str  # ENVIRONMENT_KEY | SESSIONS_TOKEN
    environment: Environment
    key: EnvironmentKey | None = None
    item: WorkItem | None = None
    generation: int | None = None
    current: bool = True  # a sessions token whose item was reclaimed or stopped is not

    @property
    def workspace(self) -> Workspace:
        return self.environment.workspace

    @property
    def session_id(self) -> str | None:
        return self.item.session_id if self.item is not None else None

    def __bool__(self) -> bool:  # ninja treats a falsy result as "not authenticated"
        return True


class WorkerAuth(HttpBearer):
    """Accepts an environment key or a sessions token (always `Authorization: Bearer`); sets
    `request.workspace` like API keys do."""

    def __init__(self, *, kinds: tuple[str, ...] = (ENVIRONMENT_KEY, SESSIONS_TOKEN)) -> None:
        super().__init__()
        self.kinds = kinds

    def __call__(self, request: HttpRequest) -> Any:
        header = request.headers.get("Authorization", "")
        if header[:7].lower() != "bearer ":
            return None
        return self.authenticate(request, header[7:].strip())

    def authenticate(self, request: HttpRequest, token: str) -> WorkerScope | None:
        raw = token or ""
        scope: WorkerScope | None = None
        if ENVIRONMENT_KEY in self.kinds:
            env_key = services.environment_key_authenticate(raw)
            if env_key is not None:
                scope = WorkerScope(ENVIRONMENT_KEY, env_key.environment, key=env_key)
        if scope is None and SESSIONS_TOKEN in self.kinds:
            claim = services.sessions_token_check(raw)
            if claim is not None:
                scope = WorkerScope(
                    SESSIONS_TOKEN,
                    claim.item.environment,
                    item=claim.item,
                    generation=claim.generation,
                    current=claim.current,
                )
        if scope is None:
            return None
        request.workspace = scope.workspace  # type: ignore[attr-defined]
        return scope


# The worker check first: it looks a credential up only when it has a worker key's prefix, so an
# API key costs nothing more and a worker's request saves the API-key lookup.
API_KEY_OR_WORKER = [WorkerAuth(), ApiKeyAuth()]
API_KEY_OR_SESSIONS_TOKEN = [WorkerAuth(kinds=(SESSIONS_TOKEN,)), ApiKeyAuth()]


def worker_scope(request: HttpRequest) -> WorkerScope | None:
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, WorkerScope) else None


def expired_token() -> ApiError:
    return ApiError(401, "This work item's sessions token has expired: the item stopped or was reclaimed.")


def check_session_access(request: HttpRequest, session: Any) -> None:
    """A worker credential reaches only its own sessions: the environment key those of its
    environment, a sessions token its item's one session. Others look like missing sessions."""
    scope = worker_scope(request)
    if scope is None:
        return
    if scope.kind == SESSIONS_TOKEN:
        if not scope.current:
            raise expired_token()
        if session.pk != scope.session_id:
            raise not_found("session", session.pk)
    elif session.environment_id != scope.environment.pk:
        raise not_found("session", session.pk)


def check_memory_store_access(request: HttpRequest, store_id: str, *, write: bool) -> str | None:
    """A sessions token reaches only the memory stores attached to its session, and writes only to
    those attached `read_write`; any other store looks missing. Returns the session a write is
    attributed to (None for an API key)."""
    scope = worker_scope(request)
    if scope is None:
        return None
    if not scope.current:
        raise expired_token()
    assert scope.session_id is not None  # only sessions tokens reach the memory routes
    attachment = attachment_of(scope.session_id, store_id)
    if attachment is None:
        raise not_found("memory store", store_id)
    if write and attachment.access != "read_write":
        raise ApiError(
            403,
            f"Memory store {store_id!r} is attached to session {scope.session_id!r} with access "
            f"{attachment.access!r}: this sessions token cannot change it.",
        )
    return scope.session_id


def refuse_sessions_token(request: HttpRequest, what: str) -> None:
    """For the memory-store routes a session has no business calling (creating, renaming, archiving,
    deleting stores, redacting versions): a sessions token there is a 403 naming the route."""
    if worker_scope(request) is not None:
        raise ApiError(403, f"A sessions token cannot {what}; use an API key.")
