"""Session workflows. The event log is insert-only and numbered per session; every append happens
in the same transaction as the state change it records (style.md 5)."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet, Subquery
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import ApiKey, Workspace
from agents import definition
from agents.models import AgentVersion, Environment
from agents.services import agent_get, agent_version_get, environment_get
from api.errors import ApiError, bad_request, conflict, not_found
from api.ids import has_prefix, new_id
from api.pagination import Page, check_limit, paginate
from api.wire import check_metadata, iso, patch_metadata, to_utc
from files import services as file_services
from galley.prepared import prepared_rows, rows_insert
from harness import pricing
from memory import attachments as memory_attachments
from selfhosted import harness as selfhosted_harness
from selfhosted import services as selfhosted_services
from sessions import schemas, streaming
from sessions.models import Event, Session, SessionThread
from skills.services import skill_refs_check, skill_refs_check_exist
from vaults.services import vault_get
from webhooks.services import webhook_event_emit, webhook_events_for_log


@dataclass
class NewEvent:
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    processed: bool = True  # queued user events are stored with processed_at null
    thread: SessionThread | None = None
    id: str | None = None  # preassigned id (e.g. a preview's event id)


class LeaseLost(Exception):
    """Another step owns the session now (our lease expired): stop without writing."""


# What an event costs the log besides its payload's JSON: its id, type, seq, times and index entries.
EVENT_OVERHEAD = 128


class SessionLogFull(ApiError):
    """The append would grow the session's log past GALLEY_SESSION_LOG_BYTES; nothing was written.
    An API call that hits it answers 413; a harness step that hits it ends the session."""

    def __init__(self, session_id: str, *, size: int, adding: int, limit: int) -> None:
        super().__init__(
            413,
            f"session {session_id!r}: its event log holds {size} bytes and these events would add "
            f"{adding}, past the limit of {limit} bytes per session (GALLEY_SESSION_LOG_BYTES).",
            error_code="session_log_limit_reached",
            details={"limit_bytes": limit},
        )
        self.session_id = session_id
        self.limit = limit


_limit_waived: ContextVar[bool] = ContextVar("session_log_limit_waived", default=False)


@contextmanager
def log_limit_waived() -> Iterator[None]:
    """Appends that end a session (its termination, its deletion, the error that says why) are
    counted but never refused: a full log must still be able to say it is full and stop."""
    token = _limit_waived.set(True)
    try:
        yield
    finally:
        _limit_waived.reset(token)


def _event_bytes(event: "NewEvent") -> int:
    return len(json.dumps(event.payload)) + len(event.type) + EVENT_OVERHEAD


def _allocate_seqs(
    session_id: str,
    count: int,
    row_updates: dict[str, Any] | None,
    row_increments: dict[str, int] | None = None,
    owner: str | None = None,
    size: int = 0,
) -> int:
    """One statement: reserve `count` seqs (and set `row_updates`, add `row_increments` on the same
    row), returning the new last_seq. With `owner`, the statement is also the lease check: it changes
    nothing unless that step still holds the lease. The same statement adds `size` to the log's
    byte counter, and changes nothing if that passes GALLEY_SESSION_LOG_BYTES (SessionLogFull) unless
    the limit is waived. Both SQLite (3.35+) and PostgreSQL support UPDATE ... RETURNING."""
    connection = transaction.get_connection()
    columns = ['"last_seq" = "last_seq" + %s', '"log_bytes" = "log_bytes" + %s']
    params: list[Any] = [count, size]
    for name, value in (row_updates or {}).items():
        model_field = Session._meta.get_field(name)
        columns.append(f'"{model_field.column}" = %s')  # type: ignore[union-attr]
        params.append(model_field.get_db_prep_save(value, connection))  # type: ignore[union-attr]
    for name, amount in (row_increments or {}).items():
        column = Session._meta.get_field(name).column  # type: ignore[union-attr]
        columns.append(f'"{column}" = "{column}" + %s')
        params.append(int(amount))
    params.append(session_id)
    where = '"id" = %s'
    if owner is not None:
        where += ' AND "lease_owner" = %s'
        params.append(owner)
    limit = settings.GALLEY_SESSION_LOG_BYTES
    if not _limit_waived.get():
        where += ' AND "log_bytes" + %s <= %s'
        params.extend([size, limit])
    table = Session._meta.db_table
    with connection.cursor() as cursor:
        sets = ", ".join(columns)
        cursor.execute(f'UPDATE "{table}" SET {sets} WHERE {where} RETURNING "last_seq"', params)
        row = cursor.fetchone()
    if row is None:
        # Only a refused append reads the row again, to say which condition refused it.
        found = Session.objects.filter(pk=session_id).values_list("lease_owner", "log_bytes").first()
        if found is None:
            raise Session.DoesNotExist(f"session {session_id!r} does not exist")
        if owner is not None and found[0] != owner:
            raise LeaseLost(session_id)
        raise SessionLogFull(session_id, size=found[1], adding=size, limit=limit)
    return int(row[0])


def events_append(
    *,
    session: Session | str,
    events: list[NewEvent],
    row_updates: dict[str, Any] | None = None,
    row_increments: dict[str, int] | None = None,
    owner: str | None = None,
) -> list[Event]:
    """Append events to a session's log with consecutive seqs. Must run inside a transaction.

    The UPDATE on the session row is the allocator: on PostgreSQL it row-locks the session until
    commit, on SQLite the immediate transaction serializes writers, so seqs commit in order.
    `row_updates` (field -> value) are written to the session row by that same UPDATE, and
    `row_increments` (field -> amount) added to it. With `owner` nothing is written unless that
    harness step still holds the session's lease (LeaseLost): the append is its own lease check.
    Nothing is written either if the events would grow the log past GALLEY_SESSION_LOG_BYTES
    (SessionLogFull), unless in `log_limit_waived()`.
    """
    if not events:
        return []
    assert transaction.get_connection().in_atomic_block, "events_append needs a transaction"
    session_id = session if isinstance(session, str) else session.pk
    count = len(events)
    size = sum(_event_bytes(item) for item in events)
    last = _allocate_seqs(session_id, count, row_updates, row_increments, owner, size)
    now = timezone.now()
    rows = [
        Event(
            id=item.id or new_id("sevt"),
            session_id=session_id,
            thread=item.thread,
            seq=last - count + 1 + index,
            type=item.type,
            payload=item.payload,
            processed_at=now if item.processed else None,
            created_at=now,
        )
        for index, item in enumerate(events)
    ]
    rows_insert(rows)  # one INSERT for the append
    # The workspace only if this instance already holds it: a deferred field would cost a query per
    # append, and the webhooks outbox looks it up itself only when an event has a webhook.
    loaded = isinstance(session, Session) and "workspace_id" not in session.get_deferred_fields()
    webhook_events_for_log(
        session_id=session_id,
        workspace_id=session.workspace_id if loaded else None,  # type: ignore[union-attr]
        events=rows,
    )
    transaction.on_commit(lambda: streaming.notify(session_id, last))
    if isinstance(session, Session):
        session.last_seq = last
    return rows


def events_mark_processed(*, session_id: str, event_ids: list[str], when: datetime | None = None) -> int:
    return Event.objects.filter(session_id=session_id, id__in=event_ids, processed_at=None).update(
        processed_at=when or timezone.now()
    )


def session_set_status(
    *,
    session: Session,
    status: str,
    stop_reason: dict[str, Any] | None = None,
    extra_events: list[NewEvent] | None = None,
    row_increments: dict[str, int] | None = None,
) -> list[Event]:
    """Change a session's status and append the matching `session.status_*` event (in the caller's
    transaction). Running time is counted only while the status is `running` (spec 16)."""
    assert transaction.get_connection().in_atomic_block, "session_set_status needs a transaction"
    now = timezone.now()
    fields = {"status": status, "updated_at": now}
    if session.running_since is not None and status != "running":
        fields["active_seconds"] = session.active_seconds + (now - session.running_since).total_seconds()
        fields["running_since"] = None
    if status == "running" and session.running_since is None:
        fields["running_since"] = now
    if status == "idle":
        fields["stop_reason"] = stop_reason or {"type": "end_turn"}
    for name, value in fields.items():
        setattr(session, name, value)
    event_type = {
        "running": "session.status_running",
        "idle": "session.status_idle",
        "rescheduling": "session.status_rescheduled",
        "terminated": "session.status_terminated",
    }[status]
    payload: dict[str, Any] = {}
    if status == "idle":
        payload["stop_reason"] = fields["stop_reason"]
    new = [*(extra_events or []), NewEvent(event_type, payload)]
    if status == "terminated":
        selfhosted_services.work_stop_for_session(session_id=session.pk)
        session_id = session.pk
        transaction.on_commit(lambda: _release_sandbox(session_id))
        with log_limit_waived():
            return events_append(
                session=session, events=new, row_updates=fields, row_increments=row_increments
            )
    # The status fields (and the caller's counters) ride on the seq allocator's UPDATE: one statement.
    return events_append(session=session, events=new, row_updates=fields, row_increments=row_increments)


# === Sessions: create, read, update, archive, delete (spec 5) ======================================

# --- wire --------------------------------------------------------------------------------------------


def session_list_cost(session: Session) -> dict[str, str]:
    """List cost: priced tokens, runtime while running and web searches, in whole cents (spec 16;
    prices from harness/pricing.py)."""
    micros = pricing.total_cost_micros(
        token_cost_micros=session.token_cost_micros,
        active_seconds=session.active_seconds_now(),
        web_search_requests=session.web_search_requests,
    )
    return {"amount": str(pricing.micros_to_cents(micros)), "currency": "USD"}


def _usage_wire(session: Session) -> dict[str, Any]:
    return {
        "input_tokens": session.input_tokens,
        "output_tokens": session.output_tokens,
        "cache_read_input_tokens": session.cache_read_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": session.cache_creation_5m_tokens,
            "ephemeral_1h_input_tokens": session.cache_creation_1h_tokens,
        },
        "server_tool_use": {
            "web_search_requests": session.web_search_requests,
            "web_fetch_requests": session.web_fetch_requests,
        },
        "active_seconds": round(session.active_seconds_now(), 3),
        "list_cost": session_list_cost(session),
    }


def _duration_seconds(created_at: datetime, frozen_at: datetime | None) -> float:
    end = frozen_at or timezone.now()
    return round(max(0.0, (end - created_at).total_seconds()), 3)


_OUTCOME_TYPES = (
    "user.define_outcome",
    "span.outcome_evaluation_start",
    "span.outcome_evaluation_ongoing",
    "span.outcome_evaluation_end",
)


def outcome_evaluations_by_session(session_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """One entry per user.define_outcome, advanced by the span.outcome_evaluation_* events, for
    several sessions in one query (lists render many sessions)."""
    rows = Event.objects.filter(session_id__in=session_ids, type__in=_OUTCOME_TYPES).order_by(
        "session_id", "seq"
    )
    by_session: dict[str, dict[str, dict[str, Any]]] = {sid: {} for sid in session_ids}
    pending_since: dict[tuple[str, str], int] = {}
    for row in rows:
        outcomes = by_session[row.session_id]
        payload = row.payload
        if row.type == "user.define_outcome":
            pending_since[(row.session_id, payload["outcome_id"])] = row.seq
            outcomes[payload["outcome_id"]] = {
                "type": "outcome_evaluation",
                "outcome_id": payload["outcome_id"],
                "description": payload.get("description", ""),
                "iteration": 0,
                "result": "pending",
                "explanation": None,
                "completed_at": None,
            }
            continue
        entry = outcomes.get(payload.get("outcome_id", ""))
        if entry is None:
            continue
        entry["iteration"] = int(payload.get("iteration", entry["iteration"]))
        if row.type == "span.outcome_evaluation_end" and payload.get("result") == "needs_revision":
            # Not terminal: the agent revises, on the next cycle.
            entry["result"] = "running"
            entry["explanation"] = payload.get("explanation")
            entry["iteration"] += 1
        elif row.type == "span.outcome_evaluation_end":
            entry["result"] = payload.get("result", "failed")
            entry["explanation"] = payload.get("explanation")
            entry["completed_at"] = iso(row.processed_at or row.created_at)
        else:
            entry["result"] = "evaluating"
    for (sid, outcome_id), seq in pending_since.items():
        entry = by_session[sid][outcome_id]
        # Pending until the agent's first model request after the outcome was defined.
        if (
            entry["result"] == "pending"
            and Event.objects.filter(session_id=sid, type="span.model_request_start", seq__gt=seq).exists()
        ):
            entry["result"] = "running"
    return {sid: list(outcomes.values()) for sid, outcomes in by_session.items()}


def session_wire(
    session: Session,
    *,
    outcomes: list[dict[str, Any]] | None = None,
    resources: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The session object. Lists pass `outcomes` and `resources` fetched for the whole page."""
    frozen = session.updated_at if session.status == "terminated" else None
    return {
        "id": session.pk,
        "type": "session",
        "status": session.status,
        "agent": session.agent_snapshot,
        "environment_id": session.environment_id,
        "title": session.title,
        "metadata": session.metadata,
        "vault_ids": list(session.vault_ids or []),
        "resources": resources if resources is not None else file_services.session_resources_wire(session),
        "outcome_evaluations": (
            outcomes if outcomes is not None else outcome_evaluations_by_session([session.pk])[session.pk]
        ),
        "stats": {
            "active_seconds": round(session.active_seconds_now(), 3),
            "duration_seconds": _duration_seconds(session.created_at, frozen),
        },
        "usage": _usage_wire(session),
        "budget": session.budget,
        "deployment_id": session.deployment_id,
        "created_at": iso(session.created_at),
        "updated_at": iso(session.updated_at),
        "archived_at": iso(session.archived_at),
    }


def thread_wire(thread: SessionThread, *, session: Session | None = None) -> dict[str, Any]:
    """A thread on the wire. The primary thread mirrors its session's status and timing, since
    session_set_status moves the session (the primary thread's own row is not updated)."""
    session = session or thread.session
    primary = thread.parent_id is None
    status = session.status if primary else thread.status
    active = session.active_seconds_now() if primary else thread.active_seconds
    started = active > 0 or status != "idle"
    agent = {k: v for k, v in thread.agent_snapshot.items() if k != "multiagent"}
    frozen = thread.archived_at or (session.updated_at if status == "terminated" else None)
    return {
        "id": thread.pk,
        "type": "session_thread",
        "session_id": thread.session_id,
        "parent_thread_id": thread.parent_id,
        "status": status,
        "agent": agent,
        "stats": {
            "active_seconds": round(active, 3),
            "duration_seconds": _duration_seconds(thread.created_at, frozen),
            "startup_seconds": 0.0,
        }
        if started
        else None,
        "usage": None,
        "workflow_run_id": None,
        "created_at": iso(thread.created_at),
        "updated_at": iso(session.updated_at if primary else thread.updated_at),
        "archived_at": iso(thread.archived_at),
    }


# --- create ------------------------------------------------------------------------------------------


def _resolve_agent(*, workspace: Workspace, value: Any) -> AgentVersion:
    if isinstance(value, str):
        if not value:
            raise bad_request("agent: must not be empty.")
        agent = agent_get(workspace=workspace, agent_id=value)
        version = None
    elif isinstance(value, dict):
        kind = value.get("type")
        if kind not in ("agent", "agent_with_overrides"):
            raise bad_request(f"agent.type: must be 'agent' or 'agent_with_overrides', got {kind!r}.")
        agent_id = value.get("id")
        if not isinstance(agent_id, str) or not agent_id:
            raise bad_request("agent.id: field required.")
        version = value.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            raise bad_request("agent.version: must be an integer >= 1.")
        agent = agent_get(workspace=workspace, agent_id=agent_id)
        if kind == "agent":
            extra = sorted(set(value) - {"type", "id", "version"})
        else:
            extra = sorted(set(value) - {"type", "id", "version", *_OVERRIDABLE})
        if extra:
            raise bad_request(f"agent.{extra[0]}: unknown field for type {kind!r}.")
    else:
        raise bad_request("agent: expected an agent id string or an object {type, id, version}.")
    if agent.is_archived:
        raise bad_request(f"agent: agent {agent.pk!r} is archived; new sessions cannot use it.")
    return agent_version_get(agent=agent, version=version)


_OVERRIDABLE = ("model", "system", "tools", "mcp_servers", "skills")


def _apply_overrides(snapshot: dict[str, Any], value: Any, *, workspace: Workspace) -> dict[str, Any]:
    """`agent_with_overrides`: session-local replacements, resolved the way agent fields are. An
    effort inside an overridden model is ignored (the agent's stays); inference_geo applies."""
    if not isinstance(value, dict) or value.get("type") != "agent_with_overrides":
        return snapshot
    out = dict(snapshot)
    if value.get("model") is not None:
        model = definition.resolve_model(value["model"], current=snapshot["model"], field="agent.model")
        from providers.services import model_require

        model_require(model_id=model["id"], field="agent.model")
        model["effort"] = dict(snapshot["model"].get("effort") or {"type": definition.DEFAULT_EFFORT})
        out["model"] = model
    if "system" in value:
        out["system"] = definition.optional_str(
            value["system"], "agent.system", max_len=definition.SYSTEM_MAX
        )
    if value.get("tools") is not None:
        out["tools"] = definition.resolve_tools(value["tools"], "agent.tools")
    if value.get("mcp_servers") is not None:
        out["mcp_servers"] = definition.resolve_mcp_servers(value["mcp_servers"], "agent.mcp_servers")
    if value.get("skills") is not None:
        skills = definition.resolve_skills(value["skills"], "agent.skills")
        out["skills"] = skill_refs_check(workspace=workspace, snapshot=out, skills=skills)
    definition.check_mcp_references(out.get("tools", []), out.get("mcp_servers", []))
    return out


def _session_snapshot(version: AgentVersion) -> dict[str, Any]:
    """`session.agent`: the version's snapshot with a coordinator roster resolved to the members'
    full definitions (spec 9; the agent itself shows only {type, id, version} per member)."""
    snapshot = version.snapshot()
    roster = snapshot.get("multiagent")
    if isinstance(roster, dict) and roster.get("type") == "coordinator":
        members = []
        for entry in roster.get("agents", []):
            if isinstance(entry, dict) and entry.get("type") == "agent":
                member = AgentVersion.objects.filter(
                    agent_id=str(entry.get("id")), version=int(entry.get("version") or 0)
                ).first()
                if member is None:
                    raise bad_request(
                        f"agent: roster member {entry.get('id')!r} version {entry.get('version')} "
                        "no longer exists."
                    )
                members.append({k: v for k, v in member.snapshot().items() if k != "multiagent"})
            else:
                members.append(entry)
        snapshot["multiagent"] = {**roster, "agents": members}
    return snapshot


def _resolve_agent_patch(patch: dict[str, Any], snapshot: dict[str, Any]) -> dict[str, Any]:
    """Replace tools / mcp_servers in a session's agent snapshot, resolved the way agents are."""
    out = dict(snapshot)
    if "tools" in patch:
        out["tools"] = definition.resolve_tools(patch["tools"], "agent.tools")
    if "mcp_servers" in patch:
        out["mcp_servers"] = definition.resolve_mcp_servers(patch["mcp_servers"], "agent.mcp_servers")
    definition.check_mcp_references(out.get("tools", []), out.get("mcp_servers", []))
    return out


_CREATE_FIELDS = frozenset(
    {"agent", "environment_id", "title", "metadata", "vault_ids", "resources", "initial_events", "budget"}
)


def session_create(
    *,
    workspace: Workspace,
    body: dict[str, Any],
    api_key: ApiKey | None = None,
    deployment_id: str | None = None,
) -> Session:
    if not isinstance(body, dict):
        raise bad_request("body: expected a JSON object.")
    unknown = sorted(set(body) - _CREATE_FIELDS)
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field.")
    if body.get("agent") is None:
        raise bad_request("agent: field required.")
    environment_id = body.get("environment_id")
    if not isinstance(environment_id, str) or not environment_id:
        raise bad_request("environment_id: field required.")
    title = body.get("title")
    if title is not None and (not isinstance(title, str) or len(title) > 512):
        raise bad_request("title: must be a string of at most 512 characters or null.")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise bad_request("metadata: expected an object.")
    metadata = check_metadata(metadata)
    vault_ids = body.get("vault_ids") or []
    if not isinstance(vault_ids, list) or not all(isinstance(v, str) and v for v in vault_ids):
        raise bad_request("vault_ids: expected a list of vault ids.")
    if len(set(vault_ids)) != len(vault_ids):
        raise bad_request("vault_ids: must not repeat a vault.")
    budget = schemas.check_budget(body["budget"]) if body.get("budget") is not None else None
    resources = body.get("resources")
    file_services.session_resources_validate(workspace=workspace, resources=resources)
    memory_planned = memory_attachments.memory_resources_plan(workspace=workspace, resources=resources)
    initial: list[dict[str, Any]] = []
    if body.get("initial_events") not in (None, []):
        initial = schemas.check_client_events(
            body["initial_events"],
            "initial_events",
            allowed=schemas.INITIAL_EVENT_TYPES,
            max_items=schemas.MAX_INITIAL_EVENTS,
        )

    version = _resolve_agent(workspace=workspace, value=body["agent"])
    environment = environment_get(workspace=workspace, environment_id=environment_id)
    if environment.is_archived:
        raise bad_request(
            f"environment_id: environment {environment.pk!r} is archived.", error_code="environment_archived"
        )
    for index, vault_id in enumerate(vault_ids):
        vault = vault_get(workspace=workspace, vault_id=vault_id)
        if vault.archived_at is not None:
            raise bad_request(f"vault_ids[{index}]: vault {vault_id!r} is archived.")

    snapshot = _apply_overrides(_session_snapshot(version), body["agent"], workspace=workspace)
    skill_refs_check_exist(snapshot=snapshot)
    defaulted = False
    if budget is None and "budget" not in body:
        # An admin's per-session default (costs/) stands in for a budget the body leaves out. An
        # explicit `budget: null` is the wire's "no budget" (the session's `budget` is null, and null
        # on update removes one), so the client gets an uncapped session, as it asked.
        from costs.services import session_budget_default

        budget = session_budget_default(workspace=workspace)
        defaulted = budget is not None
    if budget is not None:
        from harness.budget import check_budgetable

        try:
            check_budgetable(snapshot)
        except ApiError as exc:
            if not defaulted:
                raise
            reason = exc.message.removeprefix("budget: ")
            raise bad_request(
                f"budget: this workspace's default session budget applies to new sessions, but {reason}",
                error_code=exc.details.get("error_code"),
            ) from None
    now = timezone.now()
    with transaction.atomic():
        session = Session.objects.create(
            id=new_id("sesn"),
            workspace=workspace,
            api_key=api_key,
            agent=version.agent,
            agent_version=version.version,
            agent_snapshot=snapshot,
            environment=environment,
            title=title,
            metadata=metadata,
            vault_ids=vault_ids,
            budget=budget,
            deployment_id=deployment_id,
            created_at=now,
            updated_at=now,
        )
        SessionThread.objects.create(
            id=new_id("sthr"),
            session=session,
            parent=None,
            agent_name=snapshot.get("name", ""),
            agent_snapshot=snapshot,
            created_at=now,
            updated_at=now,
        )
        if resources:
            file_resources = [r for r in resources if not memory_attachments.is_memory_resource(r)]
            file_services.session_resources_attach(session=session, resources=file_resources)
            memory_attachments.memory_resources_attach(session=session, planned=memory_planned)
        webhook_event_emit(workspace=workspace, type="session.created", data={"id": session.pk})
        selfhosted_services.work_ensure(environment=environment, session_id=session.pk)
        if initial:
            _append_client_events(session=session, events=initial, environment=environment)
    return session


# --- read ----------------------------------------------------------------------------------------------


def session_get(*, workspace: Workspace, session_id: str) -> Session:
    # Every session route starts here: compiled once (galley/prepared.py).
    rows = prepared_rows(
        "sessions.get",
        lambda pk, ws: Session.objects.filter(pk=pk, workspace_id=ws),
        session_id,
        workspace.pk,
    )
    if not rows:
        raise not_found("session", session_id)
    return rows[0]  # type: ignore[no-any-return]


def parse_timestamp(value: str, where: str) -> datetime:
    parsed = None
    try:
        parsed = parse_datetime(value.strip().replace(" ", "+"))
    except ValueError:
        parsed = None
    if parsed is None:
        raise bad_request(f"{where}: {value!r} is not an RFC 3339 timestamp.")
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, UTC)
    return to_utc(parsed, field=where)


def _range_filter(qs: QuerySet[Any], column: str, bounds: dict[str, str | None], name: str) -> QuerySet[Any]:
    for op in ("gt", "gte", "lt", "lte"):
        raw = bounds.get(op)
        if raw:
            qs = qs.filter(**{f"{column}__{op}": parse_timestamp(raw, f"{name}[{op}]")})
    return qs


def session_list(
    *,
    workspace: Workspace,
    agent_id: str | None = None,
    agent_version: int | None = None,
    created_at: dict[str, str | None] | None = None,
    include_archived: bool = False,
    statuses: list[str] | None = None,
    deployment_id: str | None = None,
    memory_store_id: str | None = None,
    order: str = "desc",
    limit: int | None = None,
    page: str | None = None,
) -> Page:
    if agent_version is not None and not agent_id:
        raise bad_request("agent_version: only allowed together with agent_id.")
    if order not in ("asc", "desc"):
        raise bad_request(f"order: must be 'asc' or 'desc', got {order!r}.")
    for status in statuses or []:
        if status not in schemas.SESSION_STATUSES:
            raise bad_request(f"statuses: unknown status {status!r}.")
    size = check_limit(limit, default=20, maximum=100)
    qs = Session.objects.filter(workspace=workspace)
    if agent_id:
        qs = qs.filter(agent_id=agent_id)
    if agent_version is not None:
        qs = qs.filter(agent_version=agent_version)
    if not include_archived:
        qs = qs.filter(archived_at=None)
    if statuses:
        qs = qs.filter(status__in=statuses)
    if deployment_id:
        qs = qs.filter(deployment_id=deployment_id)
    if memory_store_id:
        qs = qs.filter(memory_stores__memory_store_id=memory_store_id)
    qs = _range_filter(qs, "created_at", created_at or {}, "created_at")
    return paginate(qs, fields=("created_at", "id"), limit=size, order=order, page=page)  # type: ignore[arg-type]


# --- update, archive, delete ------------------------------------------------------------------------


def _check_writable(session: Session) -> None:
    if session.is_archived:
        raise conflict(f"session {session.pk!r} is archived and read-only.", error_code="session_archived")


def _check_tools(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(
        isinstance(item, dict) and isinstance(item.get("type"), str) for item in value
    ):
        raise bad_request(f"{where}: expected a list of objects with a `type`.")
    return value


_UPDATE_FIELDS = frozenset({"title", "metadata", "agent", "budget", "vault_ids"})


def session_update(*, session: Session, body: dict[str, Any]) -> Session:
    if not isinstance(body, dict):
        raise bad_request("body: expected a JSON object.")
    unknown = sorted(set(body) - _UPDATE_FIELDS)
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field.")
    if "vault_ids" in body:
        raise bad_request("vault_ids: can only be set when the session is created.")
    agent_patch = body.get("agent")
    if agent_patch is not None:
        if not isinstance(agent_patch, dict):
            raise bad_request("agent: expected an object {tools?, mcp_servers?}.")
        extra = sorted(set(agent_patch) - {"tools", "mcp_servers", "type"})
        if extra:
            raise bad_request(f"agent.{extra[0]}: only tools and mcp_servers can change mid-session.")
        for key in ("tools", "mcp_servers"):
            if key in agent_patch:
                _check_tools(agent_patch[key], f"agent.{key}")
    if (
        "title" in body
        and body["title"] is not None
        and (not isinstance(body["title"], str) or len(body["title"]) > 512)
    ):
        raise bad_request("title: must be a string of at most 512 characters or null.")
    if "metadata" in body and body["metadata"] is not None and not isinstance(body["metadata"], dict):
        raise bad_request("metadata: expected an object.")
    new_budget = schemas.check_budget(body["budget"]) if body.get("budget") is not None else None

    with transaction.atomic():
        session = Session.objects.select_for_update().get(pk=session.pk)
        _check_writable(session)
        changed: dict[str, Any] = {}
        if "title" in body and body["title"] != session.title:
            changed["title"] = body["title"]
        if body.get("metadata") is not None:
            merged = patch_metadata(session.metadata, body["metadata"])
            if merged != session.metadata:
                changed["metadata"] = merged
        if agent_patch:
            if session.status == "running":
                raise conflict(
                    "agent: a running session's tools cannot change; interrupt it or wait for idle."
                )
            snapshot = _resolve_agent_patch(agent_patch, session.agent_snapshot)
            if snapshot != session.agent_snapshot:
                changed["agent"] = snapshot
        if "budget" in body:
            if body["budget"] is None:
                if session.budget is not None:
                    changed["budget"] = None
            else:
                if session.budget is None:
                    raise bad_request(
                        "budget: a budget cannot be added to a session created without one.",
                        error_code="budget_create_only",
                    )
                assert new_budget is not None
                spent = int(session_list_cost(session)["amount"])
                if int(new_budget["max_list_cost"]["amount"]) <= spent:
                    raise bad_request(
                        f"budget.max_list_cost.amount: must exceed the cost so far ({spent}).",
                        error_code="budget_not_raised",
                    )
                if new_budget != session.budget:
                    changed["budget"] = new_budget
        if not changed:
            return session
        fields = {("agent_snapshot" if k == "agent" else k): v for k, v in changed.items()}
        fields["updated_at"] = timezone.now()
        Session.objects.filter(pk=session.pk).update(**fields)
        for name, value in fields.items():
            setattr(session, name, value)
        if "agent" in changed:
            SessionThread.objects.filter(session=session, parent=None).update(agent_snapshot=changed["agent"])
        events_append(session=session, events=[NewEvent("session.updated", changed)])
        if (
            "budget" in changed
            and session.status == "idle"
            and (session.stop_reason or {}).get("type") == "budget_reached"
        ):
            transaction.on_commit(lambda: _kick(session.pk))
    return session


def session_archive(*, session: Session) -> Session:
    with transaction.atomic():
        session = Session.objects.select_for_update().get(pk=session.pk)
        if session.is_archived:
            return session
        now = timezone.now()
        if session.status != "terminated":
            session_set_status(session=session, status="terminated")
        Session.objects.filter(pk=session.pk).update(archived_at=now, updated_at=now)
        SessionThread.objects.filter(session=session, archived_at=None).update(archived_at=now)
        session.archived_at = now
        session.updated_at = now
        webhook_event_emit(workspace=session.workspace_id, type="session.archived", data={"id": session.pk})
        transaction.on_commit(lambda: _kick(session.pk))
    return session


def session_delete(*, session: Session) -> dict[str, str]:
    """Delete a session and its log. The `session.deleted` event cannot be read back from a log that
    no longer exists, so it also goes straight to open streams (which then close); a stream that
    misses it notices the session is gone on its next read."""
    with transaction.atomic():
        session = Session.objects.select_for_update().get(pk=session.pk)
        if session.status == "running":
            raise conflict(f"session {session.pk!r} is running; interrupt it before deleting it.")
        with log_limit_waived():
            [event] = events_append(session=session, events=[NewEvent("session.deleted")])
        wire = event.wire()
        session_id = session.pk
        selfhosted_services.work_stop_for_session(session_id=session_id)
        session.delete()
        transaction.on_commit(lambda: streaming.publish_deleted(session_id, wire))
        transaction.on_commit(lambda: _destroy_sandbox(session_id))
    return {"id": session_id, "type": "session_deleted"}


def _release_sandbox(session_id: str) -> None:
    from sandboxes.tasks import release_session_sandboxes

    release_session_sandboxes.delay(session_id)


def _destroy_sandbox(session_id: str) -> None:
    from sandboxes.services import sandbox_destroy

    sandbox_destroy(session_id=session_id)


# --- events ------------------------------------------------------------------------------------------


def _kick(session_id: str) -> None:
    from harness.dispatch import session_kick

    session_kick(session_id)


def _check_references(*, session: Session, events: list[dict[str, Any]], environment: Environment) -> None:
    """Cross-row checks: ids must name events of this session that still await an answer."""
    kinds = {event["type"] for event in events}
    answered_confirmations: set[str] = set()
    if "user.tool_confirmation" in kinds:
        answered_confirmations = set(
            Event.objects.filter(session=session, type="user.tool_confirmation").values_list(
                "payload__tool_use_id", flat=True
            )
        )
    answered_custom: set[str] = set()
    if "user.custom_tool_result" in kinds:
        answered_custom = set(
            Event.objects.filter(session=session, type="user.custom_tool_result").values_list(
                "payload__custom_tool_use_id", flat=True
            )
        )
    seen: set[str] = set()
    for index, event in enumerate(events):
        where = f"events[{index}]"
        kind = event["type"]
        if kind == "user.tool_confirmation":
            target = Event.objects.filter(
                session=session, pk=event["tool_use_id"], type__in=["agent.tool_use", "agent.mcp_tool_use"]
            ).first()
            if target is None:
                raise bad_request(
                    f"{where}.tool_use_id: {event['tool_use_id']!r} is not an agent.tool_use or "
                    "agent.mcp_tool_use event of this session."
                )
            if (
                target.payload.get("evaluated_permission") != "ask"
                or target.pk in answered_confirmations
                or target.pk in seen
            ):
                raise bad_request(f"{where}.tool_use_id: {target.pk!r} is not awaiting confirmation.")
            seen.add(target.pk)
            if target.payload.get("session_thread_id"):
                event["session_thread_id"] = target.payload["session_thread_id"]
        elif kind == "user.custom_tool_result":
            target = Event.objects.filter(
                session=session, pk=event["custom_tool_use_id"], type="agent.custom_tool_use"
            ).first()
            if target is None:
                raise bad_request(
                    f"{where}.custom_tool_use_id: {event['custom_tool_use_id']!r} is not an "
                    "agent.custom_tool_use event of this session."
                )
            if target.pk in answered_custom or target.pk in seen:
                raise bad_request(f"{where}.custom_tool_use_id: {target.pk!r} was already answered.")
            seen.add(target.pk)
            if target.payload.get("session_thread_id"):
                event["session_thread_id"] = target.payload["session_thread_id"]
        elif kind == "user.tool_result":
            if not environment.is_self_hosted:
                raise bad_request(
                    f"{where}.type: user.tool_result is only accepted for self_hosted environments."
                )
            _check_tool_result(session=session, event=event, where=where, seen=seen)
        elif kind == "user.define_outcome":
            from harness.outcomes import outcome_check_define

            if any(e["type"] == "user.define_outcome" for e in events[:index]):
                raise bad_request(f"{where}: only one user.define_outcome can be worked on at a time.")
            outcome_check_define(session=session, event=event, where=where)
        elif kind == "user.interrupt" and event.get("session_thread_id"):
            if not SessionThread.objects.filter(session=session, pk=event["session_thread_id"]).exists():
                raise ApiError(
                    404,
                    f"{where}.session_thread_id: thread {event['session_thread_id']!r} was not found.",
                    error_code="thread_not_found",
                )


def _check_tool_result(*, session: Session, event: dict[str, Any], where: str, seen: set[str]) -> None:
    """A self-hosted worker's answer must close an open built-in call, once (matched by id alone:
    the body names no thread). Anything else is a 409 naming the id, and nothing is appended."""
    use_id = event["tool_use_id"]
    target = Event.objects.filter(session=session, pk=use_id, type="agent.tool_use").first()
    if target is None or not selfhosted_harness.runs_on_worker(target):
        raise conflict(
            f"{where}.tool_use_id: {use_id!r} is not an agent.tool_use call of this session "
            "that a worker runs."
        )
    answered = Event.objects.filter(
        session=session, type__in=("agent.tool_result", "user.tool_result"), payload__tool_use_id=use_id
    ).exists()
    if answered or use_id in seen:
        raise conflict(f"{where}.tool_use_id: {use_id!r} was already answered.")
    if (
        target.payload.get("evaluated_permission") == "ask"
        and not Event.objects.filter(
            session=session,
            type="user.tool_confirmation",
            payload__tool_use_id=use_id,
            payload__result="allow",
        ).exists()
    ):
        raise conflict(f"{where}.tool_use_id: {use_id!r} is still awaiting user.tool_confirmation.")
    seen.add(use_id)
    if target.payload.get("session_thread_id"):
        event["session_thread_id"] = target.payload["session_thread_id"]


def _append_client_events(
    *, session: Session, events: list[dict[str, Any]], environment: Environment
) -> list[Event]:
    """Append validated client events and, if they give an idle session work, start it. Runs in the
    caller's transaction with the session row locked."""
    _check_references(session=session, events=events, environment=environment)
    session_id = session.pk
    # Registered before the appends register their stream wake-ups: after the commit the step is
    # handed to a worker first, and this process serves the streams while that worker starts.
    transaction.on_commit(lambda: _kick(session_id))
    new: list[NewEvent] = []
    for event in events:
        payload = {k: v for k, v in event.items() if k != "type"}
        if event["type"] == "user.define_outcome":
            payload["outcome_id"] = new_id("outc")
        new.append(NewEvent(event["type"], payload, processed=event["type"] in schemas.PROCESSED_ON_RECEIPT))
    if any(e["type"] in schemas.ACTIONABLE_TYPES and e["type"] != "user.tool_result" for e in events):
        # A self_hosted session whose worker left (or never came) gets a new work item.
        selfhosted_services.work_ensure(environment=environment, session_id=session.pk)
    if session.status in ("idle", "rescheduling") and any(
        e["type"] in schemas.ACTIONABLE_TYPES for e in events
    ):
        # The events and the status_running after them: one append, one UPDATE of the row.
        rows = session_set_status(session=session, status="running", extra_events=new)[: len(new)]
    else:
        rows = events_append(session=session, events=new)
    return rows


def events_send(*, session: Session, events: list[dict[str, Any]]) -> list[Event]:
    checked = schemas.check_client_events(events, "events")
    with transaction.atomic():
        # The hottest write: compiled once per process (galley/prepared.py).
        locked = prepared_rows(
            "sessions.send_lock", lambda pk: Session.objects.select_for_update().filter(pk=pk), session.pk
        )
        if not locked:
            raise not_found("session", session.pk)
        session = locked[0]
        session.environment = prepared_rows(
            "sessions.send_environment", lambda pk: Environment.objects.filter(pk=pk), session.environment_id
        )[0]
        _check_writable(session)
        if session.status == "terminated":
            raise conflict(
                f"session {session.pk!r} is terminated and accepts no events.",
                error_code="session_terminated",
            )
        paused = session.status == "idle" and (session.stop_reason or {}).get("type") == "budget_reached"
        if paused:
            for index, event in enumerate(checked):
                if event["type"] not in schemas.SETTLE_TYPES:
                    raise bad_request(
                        f"events[{index}].type: the session is paused at its budget; only "
                        "tool confirmations, tool results and interrupts are accepted."
                    )
        return _append_client_events(session=session, events=checked, environment=session.environment)


def _primary_filter(thread: SessionThread | None) -> Q:
    """Events of the primary thread are stored with thread null (or the primary's id); a child
    thread's events carry its id."""
    if thread is None or thread.parent_id is None:
        return Q(thread__isnull=True) | Q(thread__parent__isnull=True)
    return Q(thread=thread)


def events_list(
    *,
    session: Session,
    thread: SessionThread | None = None,
    types: list[str] | None = None,
    created_at: dict[str, str | None] | None = None,
    order: str = "asc",
    limit: int | None = None,
    page: str | None = None,
) -> Page:
    if order not in ("asc", "desc"):
        raise bad_request(f"order: must be 'asc' or 'desc', got {order!r}.")
    for kind in types or []:
        if kind not in schemas.FILTERABLE_EVENT_TYPES:
            raise bad_request(f"types: unknown event type {kind!r}.")
    size = check_limit(limit, default=1000, maximum=1000)
    qs = Event.objects.filter(session=session).filter(_primary_filter(thread))
    if types:
        qs = qs.filter(type__in=types)
    qs = _range_filter(qs, "processed_at", created_at or {}, "created_at")
    return paginate(qs, fields=("seq", "id"), limit=size, order=order, page=page)  # type: ignore[arg-type]


def events_since(
    *, session_id: str, thread: SessionThread | None, after_seq: int, woken: bool = False, limit: int = 500
) -> tuple[list[Event], int, str | None]:
    """What a stream reads: the events after `after_seq` of one thread (the primary's for None) up to
    the session's committed last_seq, that last_seq and the session's status; ([], after_seq, None)
    once the session is gone. A committed last_seq implies its events are committed, so a reader
    never sees a gap: the events are read with the head in one statement, or after it.

    `woken`: a wake-up said events were appended, so the one statement that reads them with the
    head comes first; otherwise (a stream opening, a safety poll) the head alone usually shows
    there is nothing to read. Both statements are compiled once per process (galley/prepared.py)."""
    if woken:
        found = _events_with_head(session_id, thread, after_seq, limit)
        if found is not None:
            return found
    head = prepared_rows(
        "sessions.head", lambda pk: Session.objects.only("last_seq", "status").filter(pk=pk), session_id
    )
    if not head:
        return [], after_seq, None
    last_seq, status = int(head[0].last_seq), str(head[0].status)
    if last_seq <= after_seq:
        return [], after_seq, status
    found = _events_with_head(session_id, thread, after_seq, limit)
    # None: no event of this thread up to a head at least as new as the one just read.
    return found if found is not None else ([], last_seq, status)


def _events_with_head(
    session_id: str, thread: SessionThread | None, after_seq: int, limit: int
) -> tuple[list[Event], int, str] | None:
    """One statement: the thread's events after `after_seq` up to the session's last_seq, each with
    that last_seq and the status as read by the same statement. None when it finds no event."""

    def build(pk: Any, seq: Any, *thread_id: Any) -> QuerySet[Event]:
        head = Session.objects.filter(pk=pk)
        return (
            Event.objects.filter(session_id=pk, seq__gt=seq, seq__lte=Subquery(head.values("last_seq")[:1]))
            .filter(Q(thread_id=thread_id[0]) if thread_id else _primary_filter(None))
            .annotate(
                head_seq=Subquery(head.values("last_seq")[:1]),
                head_status=Subquery(head.values("status")[:1]),
            )
            .order_by("seq")[:limit]
        )

    child = () if thread is None or thread.parent_id is None else (thread.pk,)
    key = f"sessions.events_with_head:{'thread' if child else 'primary'}:{limit}"
    rows: list[Event] = prepared_rows(key, build, session_id, after_seq, *child)
    if not rows:
        return None
    return rows, int(rows[0].head_seq), str(rows[0].head_status)  # type: ignore[attr-defined]


# --- threads -----------------------------------------------------------------------------------------


def thread_get(*, session: Session, thread_id: str) -> SessionThread:
    thread = SessionThread.objects.filter(session=session, pk=thread_id).first()
    if thread is None:
        raise not_found("thread", thread_id, error_code="thread_not_found")
    return thread


def thread_list(
    *, session: Session, statuses: list[str] | None = None, limit: int | None = None, page: str | None = None
) -> Page:
    for status in statuses or []:
        if status not in schemas.SESSION_STATUSES:
            raise bad_request(f"statuses: unknown status {status!r}.")
    size = check_limit(limit, default=1000, maximum=1000)
    qs = SessionThread.objects.filter(session=session)
    if statuses:
        # The primary thread's status is its session's.
        primary = Q(parent__isnull=True) & Q(session__status__in=statuses)
        qs = qs.filter(primary | (Q(parent__isnull=False) & Q(status__in=statuses)))
    return paginate(qs, fields=("created_at", "id"), limit=size, order="asc", page=page)


def thread_archive(*, session: Session, thread: SessionThread) -> SessionThread:
    if thread.parent_id is None:
        raise bad_request("the primary thread cannot be archived; archive the session instead.")
    with transaction.atomic():
        thread = SessionThread.objects.select_for_update().get(pk=thread.pk)
        if thread.archived_at is not None:
            return thread
        if thread.status != "idle":
            raise conflict(f"thread {thread.pk!r} is {thread.status}; only an idle thread can be archived.")
        now = timezone.now()
        # Conditional: a harness step may have started the thread since we read it.
        if not SessionThread.objects.filter(pk=thread.pk, status="idle").update(
            archived_at=now, updated_at=now
        ):
            raise conflict(f"thread {thread.pk!r} is no longer idle.")
        thread.archived_at = now
        thread.updated_at = now
    return thread


def check_prefix(value: str, prefix: str, kind: str) -> None:
    if not has_prefix(value, prefix):
        raise not_found(kind, value, error_code="thread_not_found" if kind == "thread" else None)
