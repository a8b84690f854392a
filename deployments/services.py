"""Deployments: create, update, pause, run, and the scheduler that fires due ones.

Exactly once per due time: `next_fire_at` is the schedule's next due instant, and firing claims it
with a conditional UPDATE that moves it to the following one, in the same transaction that inserts
the run (unique per deployment and due time) and creates the session. Several beat or worker
processes may tick at once: one UPDATE wins, the others change no row and do nothing; a crash
rolls the whole firing back and the next tick fires it again."""

import logging
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, croniter
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Workspace
from agents import definition as d
from agents.services import agent_get, agent_version_get, environment_get
from api.errors import ApiError, bad_request, not_found
from api.ids import new_id
from api.pagination import Page, check_limit, paginate
from api.wire import check_metadata, iso, patch_metadata
from deployments.models import Deployment, DeploymentRun, DeploymentStatus
from files import services as file_services
from sessions import schemas as session_schemas
from sessions.services import session_create
from vaults import crypto
from vaults.services import vault_get
from webhooks.services import webhook_event_emit

log = logging.getLogger(__name__)

_CREATE_FIELDS = (
    "name",
    "agent",
    "environment_id",
    "initial_events",
    "budget",
    "description",
    "metadata",
    "resources",
    "schedule",
    "vault_ids",
)
_CRON_FIELD = re.compile(r"^[0-9*,/\-]+$")
MAX_VAULTS = 50
UPCOMING = 5


# === validation ===================================================================================


def _check_keys(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("body: expected a JSON object.")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field.")
    return body


def check_schedule(value: Any, field: str = "schedule") -> dict[str, str]:
    """A 5-field POSIX cron expression and an IANA timezone; no seconds or year fields, no L W # ?,
    no @shortcuts (the SDK's BetaManagedAgentsScheduleParams)."""
    schedule = d.expect_dict(value, field)
    unknown = sorted(set(schedule) - {"type", "expression", "timezone"})
    if unknown:
        raise bad_request(f"{field}.{unknown[0]}: unknown field.")
    if schedule.get("type") != "cron":
        raise bad_request(f"{field}.type: must be 'cron'.")
    expression = d.expect_str(
        schedule.get("expression"), f"{field}.expression", min_len=1, max_len=256
    ).strip()
    parts = expression.split()
    if len(parts) != 5 or not all(_CRON_FIELD.match(p) for p in parts):
        raise bad_request(
            f"{field}.expression: {expression!r} is not a 5-field cron expression "
            "(minute hour day-of-month month day-of-week; no L, W, #, ? or @shortcuts)."
        )
    try:
        croniter(expression)
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        raise bad_request(
            f"{field}.expression: {expression!r} is not a valid cron expression ({exc})."
        ) from None
    zone = d.expect_str(schedule.get("timezone"), f"{field}.timezone", min_len=1, max_len=64)
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise bad_request(f"{field}.timezone: {zone!r} is not an IANA timezone.") from None
    return {"type": "cron", "expression": " ".join(parts), "timezone": zone}


def next_due(schedule: dict[str, str], after: datetime) -> datetime:
    """The first due instant of the schedule strictly after `after`, in UTC (cron in its timezone)."""
    zone = ZoneInfo(schedule["timezone"])
    local = croniter(schedule["expression"], after.astimezone(zone)).get_next(datetime)
    return local.astimezone(UTC)


def upcoming(schedule: dict[str, str], after: datetime, count: int = UPCOMING) -> list[datetime]:
    zone = ZoneInfo(schedule["timezone"])
    it = croniter(schedule["expression"], after.astimezone(zone))
    return [it.get_next(datetime).astimezone(UTC) for _ in range(count)]


def _resolve_agent(workspace: Workspace, value: Any) -> tuple[str, int]:
    """The agent string pins the latest version now; an object pins the version it names."""
    if isinstance(value, str) and value:
        agent = agent_get(workspace=workspace, agent_id=value)
        version = None
    elif isinstance(value, dict):
        unknown = sorted(set(value) - {"type", "id", "version"})
        if unknown:
            raise bad_request(f"agent.{unknown[0]}: unknown field.")
        if value.get("type") != "agent":
            raise bad_request("agent.type: must be 'agent'.")
        agent = agent_get(workspace=workspace, agent_id=d.expect_str(value.get("id"), "agent.id", min_len=1))
        version = value.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise bad_request("agent.version: must be an integer >= 1.")
    else:
        raise bad_request("agent: expected an agent id string or an object {type: 'agent', id, version}.")
    if agent.is_archived:
        raise bad_request(f"agent: agent {agent.pk!r} is archived.")
    return agent.pk, agent_version_get(agent=agent, version=version).version


def _check_environment(workspace: Workspace, value: Any) -> str:
    environment_id = d.expect_str(value, "environment_id", min_len=1)
    environment = environment_get(workspace=workspace, environment_id=environment_id)
    if environment.is_archived:
        raise bad_request(f"environment_id: environment {environment_id!r} is archived.")
    return environment_id


def _check_vaults(workspace: Workspace, value: Any) -> list[str]:
    if value is None:
        return []
    ids = d.expect_list(value, "vault_ids")
    if len(ids) > MAX_VAULTS:
        raise bad_request(f"vault_ids: at most {MAX_VAULTS} vaults.")
    for index, vault_id in enumerate(ids):
        if not isinstance(vault_id, str) or not vault_id:
            raise bad_request(f"vault_ids[{index}]: expected a vault id.")
        if vault_get(workspace=workspace, vault_id=vault_id).archived_at is not None:
            raise bad_request(f"vault_ids[{index}]: vault {vault_id!r} is archived.")
    if len(set(ids)) != len(ids):
        raise bad_request("vault_ids: must not repeat a vault.")
    return list(ids)


def _check_initial_events(value: Any) -> list[dict[str, Any]]:
    if value is None:
        raise bad_request("initial_events: field required.")
    return session_schemas.check_client_events(
        value,
        "initial_events",
        allowed=session_schemas.INITIAL_EVENT_TYPES,
        max_items=session_schemas.MAX_INITIAL_EVENTS,
    )


def _public_resources(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "authorization_token"} for r in resources]


def _set_resources(deployment: Deployment, workspace: Workspace, value: Any) -> None:
    resources = [] if value is None else d.expect_list(value, "resources")
    file_services.session_resources_validate(workspace=workspace, resources=resources)
    deployment.resources = _public_resources(resources)
    deployment.resources_ciphertext = crypto.encrypt({"resources": resources}) if resources else ""


# === wire =========================================================================================


def deployment_wire(deployment: Deployment) -> dict[str, Any]:
    schedule = None
    if deployment.schedule:
        schedule = {
            **deployment.schedule,
            "last_run_at": iso(deployment.last_run_at),
            "upcoming_runs_at": (
                []
                if deployment.archived_at
                else [iso(t) for t in upcoming(deployment.schedule, timezone.now())]
            ),
        }
    wire: dict[str, Any] = {
        "id": deployment.pk,
        "type": "deployment",
        "name": deployment.name,
        "description": deployment.description,
        "agent": {"type": "agent", "id": deployment.agent_id, "version": deployment.agent_version},
        "environment_id": deployment.environment_id,
        "initial_events": deployment.initial_events,
        "metadata": deployment.metadata,
        "resources": deployment.resources,
        "vault_ids": deployment.vault_ids,
        "schedule": schedule,
        "status": deployment.status,
        "paused_reason": deployment.paused_reason,
        "created_at": iso(deployment.created_at),
        "updated_at": iso(deployment.updated_at),
        "archived_at": iso(deployment.archived_at),
    }
    if deployment.budget is not None:
        wire["budget"] = deployment.budget
    return wire


def run_wire(run: DeploymentRun) -> dict[str, Any]:
    trigger: dict[str, Any] = {"type": run.trigger_type}
    if run.trigger_type == "schedule":
        trigger["scheduled_at"] = iso(run.scheduled_at)
    return {
        "id": run.pk,
        "type": "deployment_run",
        "deployment_id": run.deployment_id,
        "agent": run.agent,
        "session_id": run.session_id,
        "error": run.error,
        "trigger_context": trigger,
        "created_at": iso(run.created_at),
    }


# === CRUD =========================================================================================


def _emit(deployment: Deployment, kind: str) -> None:
    webhook_event_emit(workspace=deployment.workspace_id, type=kind, data={"id": deployment.pk})


def deployment_create(*, workspace: Workspace, body: dict[str, Any]) -> Deployment:
    _check_keys(body, _CREATE_FIELDS)
    name = d.expect_str(body.get("name"), "name", min_len=1, max_len=255)
    if body.get("agent") is None:
        raise bad_request("agent: field required.")
    if body.get("environment_id") is None:
        raise bad_request("environment_id: field required.")
    _check_initial_events(body.get("initial_events"))
    agent_id, version = _resolve_agent(workspace, body["agent"])
    environment_id = _check_environment(workspace, body["environment_id"])
    metadata = check_metadata(d.expect_dict(body["metadata"], "metadata")) if body.get("metadata") else {}
    budget = session_schemas.check_budget(body["budget"]) if body.get("budget") is not None else None
    schedule = check_schedule(body["schedule"]) if body.get("schedule") is not None else None
    now = timezone.now()
    deployment = Deployment(
        id=new_id("depl"),
        workspace=workspace,
        name=name,
        description=d.optional_str(body.get("description"), "description", max_len=d.DESCRIPTION_MAX),
        agent_id=agent_id,
        agent_version=version,
        environment_id=environment_id,
        initial_events=body["initial_events"],
        metadata=metadata,
        vault_ids=_check_vaults(workspace, body.get("vault_ids")),
        budget=budget,
        budget_uncapped="budget" in body and body["budget"] is None,
        schedule=schedule,
        next_fire_at=next_due(schedule, now) if schedule else None,
        created_at=now,
        updated_at=now,
    )
    _set_resources(deployment, workspace, body.get("resources"))
    with transaction.atomic():
        deployment.save(force_insert=True)
        _emit(deployment, "deployment.created")
    return deployment


def deployment_get(*, workspace: Workspace, deployment_id: str) -> Deployment:
    deployment = Deployment.objects.filter(pk=deployment_id, workspace=workspace).first()
    if deployment is None:
        raise not_found("deployment", deployment_id)
    return deployment


def _check_writable(deployment: Deployment) -> None:
    if deployment.archived_at is not None:
        raise bad_request(f"deployment {deployment.pk!r} is archived.")


def deployment_update(*, deployment: Deployment, body: dict[str, Any]) -> Deployment:
    _check_keys(body, _CREATE_FIELDS)
    workspace = deployment.workspace
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        _check_writable(locked)
        if "name" in body:
            locked.name = d.expect_str(body["name"], "name", min_len=1, max_len=255)
        if "description" in body:
            locked.description = d.optional_str(body["description"], "description", max_len=d.DESCRIPTION_MAX)
        if "agent" in body:
            locked.agent_id, locked.agent_version = _resolve_agent(workspace, body["agent"])
        if "environment_id" in body:
            locked.environment_id = _check_environment(workspace, body["environment_id"])
        if "initial_events" in body:
            _check_initial_events(body["initial_events"])
            locked.initial_events = body["initial_events"]
        if "metadata" in body and body["metadata"] is not None:
            locked.metadata = patch_metadata(locked.metadata, d.expect_dict(body["metadata"], "metadata"))
        if "resources" in body:
            _set_resources(locked, workspace, body["resources"])
        if "vault_ids" in body:
            locked.vault_ids = _check_vaults(workspace, body["vault_ids"])
        if "budget" in body:
            locked.budget = (
                session_schemas.check_budget(body["budget"]) if body["budget"] is not None else None
            )
            locked.budget_uncapped = locked.budget is None
        if "schedule" in body:
            locked.schedule = check_schedule(body["schedule"]) if body["schedule"] is not None else None
            locked.next_fire_at = next_due(locked.schedule, timezone.now()) if locked.schedule else None
        locked.updated_at = timezone.now()
        locked.save()
        _emit(locked, "deployment.updated")
    return locked


def deployment_pause(*, deployment: Deployment) -> Deployment:
    with transaction.atomic():
        changed = Deployment.objects.filter(
            pk=deployment.pk, status=DeploymentStatus.ACTIVE, archived_at__isnull=True
        ).update(status=DeploymentStatus.PAUSED, paused_reason={"type": "manual"}, updated_at=timezone.now())
        if not changed:
            _check_writable(Deployment.objects.get(pk=deployment.pk))
        else:
            _emit(deployment, "deployment.paused")
    deployment.refresh_from_db()
    return deployment


def deployment_unpause(*, deployment: Deployment) -> Deployment:
    """Resume the schedule from now: due times missed while paused are not fired."""
    now = timezone.now()
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        _check_writable(locked)
        if locked.status == DeploymentStatus.PAUSED:
            locked.status = DeploymentStatus.ACTIVE
            locked.paused_reason = None
            locked.next_fire_at = next_due(locked.schedule, now) if locked.schedule else None
            locked.updated_at = now
            locked.save()
            _emit(locked, "deployment.unpaused")
    return locked


def deployment_archive(*, deployment: Deployment) -> Deployment:
    now = timezone.now()
    with transaction.atomic():
        if Deployment.objects.filter(pk=deployment.pk, archived_at__isnull=True).update(
            archived_at=now, updated_at=now, next_fire_at=None
        ):
            _emit(deployment, "deployment.archived")
    deployment.refresh_from_db()
    return deployment


def deployment_list(
    *,
    workspace: Workspace,
    agent_id: str | None = None,
    status: str | None = None,
    include_archived: bool = False,
    created_at: dict[str, str | None] | None = None,
    limit: int | None = None,
    page: str | None = None,
) -> Page:
    qs = Deployment.objects.filter(workspace=workspace)
    if not include_archived:
        qs = qs.filter(archived_at__isnull=True)
    if agent_id:
        qs = qs.filter(agent_id=agent_id)
    if status is not None:
        if status not in DeploymentStatus.values:
            raise bad_request(f"status: must be 'active' or 'paused', got {status!r}.")
        qs = qs.filter(status=status)
    qs = _created_filter(qs, created_at or {})
    return paginate(
        qs, fields=("created_at", "id"), limit=check_limit(limit, default=20, maximum=100), page=page
    )


def _created_filter(qs: Any, bounds: dict[str, str | None]) -> Any:
    from sessions.services import parse_timestamp

    for op, value in bounds.items():
        if value:
            qs = qs.filter(**{f"created_at__{op}": parse_timestamp(value, f"created_at[{op}]")})
    return qs


def run_get(*, workspace: Workspace, run_id: str) -> DeploymentRun:
    run = DeploymentRun.objects.filter(pk=run_id, workspace=workspace).first()
    if run is None:
        raise not_found("deployment run", run_id)
    return run


def run_list(
    *,
    workspace: Workspace,
    deployment_id: str | None = None,
    has_error: bool | None = None,
    trigger_type: str | None = None,
    created_at: dict[str, str | None] | None = None,
    limit: int | None = None,
    page: str | None = None,
) -> Page:
    qs = DeploymentRun.objects.filter(workspace=workspace)
    if deployment_id:
        qs = qs.filter(deployment_id=deployment_id)
    if has_error is not None:
        qs = qs.filter(error__isnull=not has_error) if has_error else qs.filter(session_id__isnull=False)
    if trigger_type is not None:
        if trigger_type not in ("schedule", "manual"):
            raise bad_request(f"trigger_type: must be 'schedule' or 'manual', got {trigger_type!r}.")
        qs = qs.filter(trigger_type=trigger_type)
    qs = _created_filter(qs, created_at or {})
    return paginate(
        qs, fields=("created_at", "id"), limit=check_limit(limit, default=20, maximum=1000), page=page
    )


# === firing =======================================================================================

# Errors a fire records, by what session creation refused (the SDK's run error variants).
_AUTO_PAUSE = {
    "agent_archived_error",
    "environment_archived_error",
    "environment_not_found_error",
    "vault_not_found_error",
    "vault_archived_error",
    "file_not_found_error",
}


def _error_of(exc: ApiError) -> dict[str, Any]:
    message = exc.message
    kind = "session_creation_rejected_error"
    if exc.status == 404 and message.lower().startswith("environment"):
        kind = "environment_not_found_error"
    elif exc.status == 404 and message.lower().startswith("vault"):
        kind = "vault_not_found_error"
    elif exc.status == 404 and message.lower().startswith("file"):
        kind = "file_not_found_error"
    elif "archived" in message and message.startswith("environment_id"):
        kind = "environment_archived_error"
    elif "archived" in message and message.startswith("agent"):
        kind = "agent_archived_error"
    elif "archived" in message and message.startswith("vault_ids"):
        kind = "vault_archived_error"
    return {"type": kind, "message": message}


def _fire(deployment: Deployment, *, trigger: str, scheduled_at: datetime | None) -> DeploymentRun:
    """Create the run and its session, in the caller's transaction. A refused session creation is
    recorded as the run's error; a scheduled fire that fails that way also pauses the deployment."""
    run = DeploymentRun(
        id=new_id("drun"),
        deployment=deployment,
        workspace_id=deployment.workspace_id,
        agent={"type": "agent", "id": deployment.agent_id, "version": deployment.agent_version},
        trigger_type=trigger,
        scheduled_at=scheduled_at,
    )
    body: dict[str, Any] = {
        "agent": {"type": "agent", "id": deployment.agent_id, "version": deployment.agent_version},
        "environment_id": deployment.environment_id,
        "initial_events": deployment.initial_events,
        "vault_ids": deployment.vault_ids,
    }  # the deployment's metadata stays its own; the session names it by deployment_id
    if deployment.resources_ciphertext:
        body["resources"] = crypto.decrypt(deployment.resources_ciphertext)["resources"]
    if deployment.budget is not None or deployment.budget_uncapped:
        body["budget"] = deployment.budget  # null: uncapped; omitted: the workspace default
    try:
        with transaction.atomic():
            session = session_create(workspace=deployment.workspace, body=body, deployment_id=deployment.pk)
        run.session_id = session.pk
    except ApiError as exc:
        run.error = _error_of(exc)
    run.save(force_insert=True)
    webhook_event_emit(workspace=deployment.workspace_id, type="deployment_run.started", data={"id": run.pk})
    outcome = "deployment_run.succeeded" if run.session_id else "deployment_run.failed"
    webhook_event_emit(workspace=deployment.workspace_id, type=outcome, data={"id": run.pk})
    if run.error and trigger == "schedule" and run.error["type"] in _AUTO_PAUSE:
        if Deployment.objects.filter(pk=deployment.pk, status=DeploymentStatus.ACTIVE).update(
            status=DeploymentStatus.PAUSED, paused_reason={"type": "error", "error": run.error}
        ):
            _emit(deployment, "deployment.paused")
    return run


def deployment_run_now(*, deployment: Deployment) -> DeploymentRun:
    """A manual run (`POST /v1/deployments/{id}/run`), also while paused; not while archived."""
    _check_writable(deployment)
    with transaction.atomic():
        return _fire(deployment, trigger="manual", scheduled_at=None)


def deployments_fire_due(*, now: datetime | None = None) -> list[DeploymentRun]:
    """Fire every active deployment whose due time has come, each due time exactly once."""
    now = now or timezone.now()
    fired: list[DeploymentRun] = []
    due = list(
        Deployment.objects.filter(
            status=DeploymentStatus.ACTIVE, archived_at__isnull=True, next_fire_at__lte=now
        ).select_related("workspace")[:500]
    )
    for deployment in due:
        run = _fire_one(deployment, now=now)
        if run is not None:
            fired.append(run)
    return fired


def _fire_one(deployment: Deployment, *, now: datetime) -> DeploymentRun | None:
    scheduled_at = deployment.next_fire_at
    if scheduled_at is None or deployment.schedule is None:
        return None
    # Due times missed while nobody ticked collapse into this one fire.
    following = next_due(deployment.schedule, max(now, scheduled_at))
    try:
        with transaction.atomic():
            # The claim: whoever moves next_fire_at off this due time fires it; a concurrent ticker
            # finds the row changed (PostgreSQL re-checks the WHERE after the row lock) and stops.
            claimed = Deployment.objects.filter(
                pk=deployment.pk,
                next_fire_at=scheduled_at,
                status=DeploymentStatus.ACTIVE,
                archived_at__isnull=True,
            ).update(next_fire_at=following, last_run_at=now)
            if not claimed:
                return None
            deployment.next_fire_at = following
            return _fire(deployment, trigger="schedule", scheduled_at=scheduled_at)
    except IntegrityError:
        return None  # the unique (deployment, scheduled_at) run exists: fired already
