"""Agents (versioned definitions) and environments: the workflows behind /v1/agents and
/v1/environments, shared by the API, the console and session creation."""

import re
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, ProtectedError
from django.utils import timezone

from accounts.models import Workspace
from agents import definition as d
from agents.models import Agent, AgentVersion, Environment
from api.errors import ApiError, bad_request, conflict, not_found
from api.ids import has_prefix, new_id
from api.pagination import Page, check_limit, paginate
from api.wire import check_metadata, iso, patch_metadata
from sandboxes.backends import backend_is_unsafe
from sandboxes.packages import packages_request_build, validate_packages
from skills.runtime import skill_python_request
from skills.services import skill_refs_resolve, skills_count_check
from webhooks.services import webhook_event_emit

BUILD_LOG_TAIL = 16_000  # characters of the package build log shown on the environment object

MAX_ROSTER = 20
_AGENT_FIELDS = (
    "name",
    "description",
    "system",
    "model",
    "tools",
    "mcp_servers",
    "skills",
    "multiagent",
    "execution_identity",
    "metadata",
)


# --- agents -------------------------------------------------------------------------------------------


def agent_get(*, workspace: Workspace, agent_id: str) -> Agent:
    if not has_prefix(agent_id, "agent"):
        raise not_found("Agent", agent_id)
    agent = Agent.objects.filter(workspace=workspace, id=agent_id).first()
    if agent is None:
        raise not_found("Agent", agent_id)
    return agent


def agent_version_get(*, agent: Agent, version: int | None) -> AgentVersion:
    number = agent.current_version if version is None else version
    found = AgentVersion.objects.filter(agent=agent, version=number).select_related("agent").first()
    if found is None:
        raise ApiError(404, f"Agent {agent.id!r} has no version {number}.")
    return found


def agent_wire(version: AgentVersion) -> dict[str, Any]:
    agent = version.agent
    definition = version.definition
    return {
        "id": agent.id,
        "type": "agent",
        "name": definition["name"],
        "description": definition.get("description"),
        "system": definition.get("system"),
        "model": definition["model"],
        "tools": definition.get("tools", []),
        "mcp_servers": definition.get("mcp_servers", []),
        "skills": definition.get("skills", []),
        "multiagent": definition.get("multiagent"),
        "execution_identity": definition.get("execution_identity") or {"type": "service_account"},
        "metadata": definition.get("metadata", {}),
        "version": version.version,
        "created_at": iso(agent.created_at),
        # The latest version also reflects later changes to the agent row (archiving).
        "updated_at": iso(
            agent.updated_at if version.version == agent.current_version else version.created_at
        ),
        "archived_at": iso(agent.archived_at),
    }


def _check_body_keys(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    if not isinstance(body, dict):
        raise bad_request("body: expected a JSON object.")
    for key in body:
        if key not in allowed:
            raise bad_request(f"{key}: unknown field.")


def _resolve_agent_ref(
    *, workspace: Workspace, entry: Any, where: str, self_id: str, self_version: int, seen: set[str]
) -> dict[str, Any]:
    """A roster entry naming an agent ("agent_..", {type:"agent", id, version?} or {type:"self"})
    -> {type:"agent", id, version}. Members exist in the workspace, are not archived, have no
    multiagent config of their own (one level deep) and are listed once."""
    if isinstance(entry, str):
        entry = {"type": "agent", "id": entry}
    entry = d.expect_dict(entry, where)
    entry_type = d.require_type(entry, where, ("agent", "self"))
    d.only_keys(entry, ("type", "id", "version"), where)
    if entry_type == "self" or entry.get("id") == self_id:
        if self_id in seen:
            raise bad_request(f"{where}: the agent itself is listed more than once.")
        seen.add(self_id)
        return {"type": "agent", "id": self_id, "version": self_version}
    member_id = d.expect_str(entry.get("id"), f"{where}.id", min_len=1)
    if member_id in seen:
        raise bad_request(f"{where}.id: {member_id!r} is listed more than once.")
    seen.add(member_id)
    member = (
        Agent.objects.filter(workspace=workspace, id=member_id).first()
        if has_prefix(member_id, "agent")
        else None
    )
    if member is None:
        raise bad_request(f"{where}.id: agent {member_id!r} was not found.")
    if member.is_archived:
        raise bad_request(f"{where}.id: agent {member_id!r} is archived.")
    version = entry.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise bad_request(f"{where}.version: must be a positive integer.")
    pinned = AgentVersion.objects.filter(agent=member, version=version or member.current_version).first()
    if pinned is None:
        raise bad_request(f"{where}.version: agent {member_id!r} has no version {version}.")
    if pinned.definition.get("multiagent"):
        raise bad_request(
            f"{where}.id: agent {member_id!r} has its own multiagent configuration; "
            "rosters are one level deep."
        )
    return {"type": "agent", "id": member_id, "version": pinned.version}


def _resolve_multiagent(
    *, workspace: Workspace, value: Any, self_id: str, self_version: int
) -> dict[str, Any] | None:
    """multiagent -> {type:"coordinator", agents:[{type:"agent", id, version}, ..., advisor last]}."""
    if value is None:
        return None
    data = d.expect_dict(value, "multiagent")
    if data.get("type") == "multiagent_20261001":
        # Sessions expand only coordinator rosters and the harness runs no subagents or workflows
        # from this form yet; accepting it would store a config nothing honours.
        raise bad_request("multiagent.type: 'multiagent_20261001' is not supported yet; use 'coordinator'.")
    d.require_type(data, "multiagent", ("coordinator",))
    d.only_keys(data, ("type", "agents"), "multiagent")
    entries = d.expect_list(data.get("agents"), "multiagent.agents")
    if not 1 <= len(entries) <= MAX_ROSTER:
        raise bad_request(f"multiagent.agents: must list 1 to {MAX_ROSTER} agents, got {len(entries)}.")
    roster: list[dict[str, Any]] = []
    advisor: dict[str, Any] | None = None
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"multiagent.agents[{i}]"
        if isinstance(entry, dict) and entry.get("type") == "advisor":
            d.only_keys(entry, ("type", "model"), where)
            if advisor is not None:
                raise bad_request(f"{where}: at most one advisor is allowed.")
            advisor = {
                "type": "advisor",
                "model": d.expect_str(entry.get("model"), f"{where}.model", min_len=1),
            }
            _model_served(advisor["model"], f"{where}.model")
            continue
        roster.append(
            _resolve_agent_ref(
                workspace=workspace,
                entry=entry,
                where=where,
                self_id=self_id,
                self_version=self_version,
                seen=seen,
            )
        )
    if advisor is not None:
        roster.append(advisor)  # the advisor is echoed last
    return {"type": "coordinator", "agents": roster}


def _with_self_version(
    multiagent: dict[str, Any] | None, agent_id: str, version: int
) -> dict[str, Any] | None:
    """The config with every reference to the agent itself pinned to `version`."""
    if not multiagent:
        return multiagent

    def pin(refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {**r, "version": version} if r.get("type") == "agent" and r.get("id") == agent_id else r
            for r in refs
        ]

    return {**multiagent, "agents": pin(multiagent["agents"])}


def _model_served(model_id: str, field: str) -> None:
    from providers.services import model_require

    model_require(model_id=model_id, field=field)
def _roster_skills(multiagent: dict[str, Any] | None, self_id: str) -> list[list[dict[str, Any]]]:
    """The skills of every roster member other than the agent itself, from their pinned versions."""
    out = []
    for ref in (multiagent or {}).get("agents", []):
        if ref.get("type") != "agent" or ref.get("id") == self_id:
            continue
        member = AgentVersion.objects.filter(agent_id=ref["id"], version=ref["version"]).first()
        if member is not None:
            out.append(list(member.definition.get("skills") or []))
    return out


def _resolve_fields(
    *, workspace: Workspace, body: dict[str, Any], current: dict[str, Any] | None, agent_id: str, version: int
) -> dict[str, Any]:
    """Resolve the fields present in `body` over `current` (None on create) into a full definition."""
    out: dict[str, Any] = dict(current) if current else {}
    if current is None or "name" in body:
        out["name"] = d.expect_str(body.get("name"), "name", min_len=1, max_len=d.NAME_MAX)
    if current is None or "model" in body:
        if body.get("model") is None:
            raise bad_request("model: is required and cannot be cleared.")
        out["model"] = d.resolve_model(body["model"], current=current["model"] if current else None)
        _model_served(out["model"]["id"], "model")
    if current is None or "description" in body:
        out["description"] = d.optional_str(body.get("description"), "description", max_len=d.DESCRIPTION_MAX)
    if current is None or "system" in body:
        out["system"] = d.optional_str(body.get("system"), "system", max_len=d.SYSTEM_MAX)
    if current is None or "tools" in body:
        out["tools"] = d.resolve_tools(body.get("tools"))
    if current is None or "mcp_servers" in body:
        out["mcp_servers"] = d.resolve_mcp_servers(body.get("mcp_servers"))
    if current is None or "skills" in body:
        out["skills"] = skill_refs_resolve(workspace=workspace, skills=d.resolve_skills(body.get("skills")))
    if current is None or "execution_identity" in body:
        out["execution_identity"] = d.resolve_execution_identity(body.get("execution_identity"))
    if current is None or "multiagent" in body:
        out["multiagent"] = _resolve_multiagent(
            workspace=workspace,
            value=body.get("multiagent"),
            self_id=agent_id,
            self_version=version,
        )
    if current is None:
        metadata = body.get("metadata")
        out["metadata"] = check_metadata(d.expect_dict(metadata, "metadata")) if metadata is not None else {}
    elif "metadata" in body:
        patch = body["metadata"]
        out["metadata"] = patch_metadata(
            current.get("metadata", {}), d.expect_dict(patch, "metadata") if patch is not None else None
        )
    d.check_mcp_references(out["tools"], out["mcp_servers"])
    skills_count_check(own=out["skills"], members=_roster_skills(out.get("multiagent"), agent_id))
    # A self entry always names the version it belongs to.
    out["multiagent"] = _with_self_version(out.get("multiagent"), agent_id, version)
    return {key: out.get(key) for key in _AGENT_FIELDS}


def agent_create(*, workspace: Workspace, body: dict[str, Any]) -> Agent:
    _check_body_keys(body, _AGENT_FIELDS)
    agent_id = new_id("agent")
    definition = _resolve_fields(workspace=workspace, body=body, current=None, agent_id=agent_id, version=1)
    now = timezone.now()
    with transaction.atomic():
        agent = Agent.objects.create(
            id=agent_id,
            workspace=workspace,
            name=definition["name"],
            current_version=1,
            created_at=now,
            updated_at=now,
        )
        AgentVersion.objects.create(agent=agent, version=1, definition=definition, created_at=now)
        webhook_event_emit(workspace=workspace, type="agent.created", data={"id": agent.pk})
        skill_python_request(skills=definition["skills"])
    return agent


def agent_update(*, agent: Agent, body: dict[str, Any]) -> Agent:
    _check_body_keys(body, (*_AGENT_FIELDS, "version"))
    expected = body.get("version")
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int) or expected < 1):
        raise bad_request("version: must be an integer of at least 1.")
    changes = {key: value for key, value in body.items() if key != "version"}
    with transaction.atomic():
        # The row lock serializes concurrent updates of one agent; the unique (agent, version)
        # constraint is the backstop should a writer ever skip it.
        locked = Agent.objects.select_for_update().get(pk=agent.pk)
        if locked.is_archived:
            raise ApiError(400, f"Agent {agent.id!r} is archived and read-only.", error_code="agent_archived")
        if expected is not None and expected != locked.current_version:
            raise conflict(
                f"version: agent {agent.id!r} is at version {locked.current_version}, not {expected}.",
                error_code="version_conflict",
            )
        current = AgentVersion.objects.get(agent=locked, version=locked.current_version).definition
        new_version = locked.current_version + 1
        definition = _resolve_fields(
            workspace=locked.workspace, body=changes, current=current, agent_id=locked.id, version=new_version
        )
        if _same_definition(definition, current, locked.id, locked.current_version, new_version):
            return locked
        now = timezone.now()
        AgentVersion.objects.create(agent=locked, version=new_version, definition=definition, created_at=now)
        skill_python_request(skills=definition["skills"])
        locked.current_version = new_version
        locked.name = definition["name"]
        locked.updated_at = now
        locked.save(update_fields=["current_version", "name", "updated_at"])
        webhook_event_emit(workspace=locked.workspace_id, type="agent.updated", data={"id": locked.pk})
    return locked


def _same_definition(new: dict[str, Any], old: dict[str, Any], agent_id: str, old_v: int, new_v: int) -> bool:
    """A self entry names the version being written; compare it as the current one."""
    new = {**new, "multiagent": _with_self_version(new.get("multiagent"), agent_id, old_v)}
    return new == {key: old.get(key) for key in _AGENT_FIELDS}


def agent_archive(*, agent: Agent) -> Agent:
    now = timezone.now()
    # Conditional: a second archive keeps the first timestamp.
    with transaction.atomic():
        archived = Agent.objects.filter(pk=agent.pk, archived_at__isnull=True)
        if archived.update(archived_at=now, updated_at=now):
            webhook_event_emit(workspace=agent.workspace_id, type="agent.archived", data={"id": agent.pk})
    agent.refresh_from_db()
    return agent


def agent_list(
    *,
    workspace: Workspace,
    created_at_gte: datetime | None = None,
    created_at_lte: datetime | None = None,
    include_archived: bool = False,
    limit: int | None = None,
    page: str | None = None,
) -> Page:
    qs = Agent.objects.filter(workspace=workspace)
    if not include_archived:
        qs = qs.filter(archived_at__isnull=True)
    if created_at_gte is not None:
        qs = qs.filter(created_at__gte=created_at_gte)
    if created_at_lte is not None:
        qs = qs.filter(created_at__lte=created_at_lte)
    return paginate(
        qs, fields=("created_at", "id"), limit=check_limit(limit, default=20, maximum=100), page=page
    )


def agent_latest_versions(agents: list[Agent]) -> list[AgentVersion]:
    rows = AgentVersion.objects.filter(agent__in=agents, version=F("agent__current_version")).select_related(
        "agent"
    )
    by_agent = {row.agent_id: row for row in rows}
    return [by_agent[agent.id] for agent in agents]


def agent_versions_list(*, agent: Agent, limit: int | None = None, page: str | None = None) -> Page:
    qs = AgentVersion.objects.filter(agent=agent).select_related("agent")
    return paginate(
        qs, fields=("version", "id"), limit=check_limit(limit, default=20, maximum=100), page=page
    )


# --- environments ---------------------------------------------------------------------------------------

PACKAGE_MANAGERS = ("apt", "cargo", "gem", "go", "npm", "pip")
MAX_PACKAGES = 100
MAX_ALLOWED_HOSTS = 256
_PACKAGE = re.compile(r"^[A-Za-z0-9@_][A-Za-z0-9._/@:=<>!~+^*,\[\]-]{0,213}$")
_HOST = re.compile(
    r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(:\d{1,5})?$"
)
_ENV_FIELDS = ("name", "description", "config", "metadata", "scope")


def _empty_packages() -> dict[str, Any]:
    return {"type": "packages", **{manager: [] for manager in PACKAGE_MANAGERS}}


def default_environment_config() -> dict[str, Any]:
    return {"type": "cloud", "networking": {"type": "unrestricted"}, "packages": _empty_packages()}


def _resolve_networking(value: Any, current: dict[str, Any] | None) -> dict[str, Any]:
    field = "config.networking"
    if value is None:
        return dict(current) if current else {"type": "unrestricted"}
    data = d.expect_dict(value, field)
    kind = d.require_type(data, field, ("unrestricted", "limited"))
    if kind == "unrestricted":
        d.only_keys(data, ("type",), field)
        return {"type": "unrestricted"}
    d.only_keys(data, ("type", "allowed_hosts", "allow_mcp_servers", "allow_package_managers"), field)
    base = current if current and current.get("type") == "limited" else {}
    resolved: dict[str, Any] = {"type": "limited"}
    for key, default in (
        ("allowed_hosts", []),
        ("allow_mcp_servers", False),
        ("allow_package_managers", False),
    ):
        raw = data.get(key)
        resolved[key] = base.get(key, default) if raw is None else raw
    hosts = d.expect_list(resolved["allowed_hosts"], f"{field}.allowed_hosts")
    if len(hosts) > MAX_ALLOWED_HOSTS:
        raise bad_request(f"{field}.allowed_hosts: at most {MAX_ALLOWED_HOSTS} hosts are allowed.")
    for i, host in enumerate(hosts):
        text = d.expect_str(host, f"{field}.allowed_hosts[{i}]", min_len=1, max_len=260)
        if not _HOST.match(text):
            raise bad_request(f"{field}.allowed_hosts[{i}]: {text!r} is not a hostname.")
    resolved["allowed_hosts"] = [str(h).lower() for h in hosts]
    d.expect_bool(resolved["allow_mcp_servers"], f"{field}.allow_mcp_servers")
    d.expect_bool(resolved["allow_package_managers"], f"{field}.allow_package_managers")
    return resolved


def _resolve_packages(value: Any, current: dict[str, Any] | None) -> dict[str, Any]:
    field = "config.packages"
    resolved = dict(current) if current else _empty_packages()
    if value is None:
        return resolved
    data = d.expect_dict(value, field)
    d.only_keys(data, ("type", *PACKAGE_MANAGERS), field)
    if data.get("type") is not None and data["type"] != "packages":
        raise bad_request(f"{field}.type: must be 'packages'.")
    for manager in PACKAGE_MANAGERS:
        if data.get(manager) is not None:
            resolved[manager] = list(d.expect_list(data[manager], f"{field}.{manager}"))
    resolved["type"] = "packages"
    return resolved


def environment_resolve_config(value: Any, *, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config from a request -> the fully resolved config. On update, omitted sub-fields keep
    their stored values; the type cannot change."""
    if value is None:
        return dict(current) if current else default_environment_config()
    data = d.expect_dict(value, "config")
    kind = d.require_type(data, "config", ("cloud", "self_hosted"))
    if current is not None and current.get("type") != kind:
        raise ApiError(
            400,
            f"config.type: cannot change from {current.get('type')!r} to {kind!r}.",
            error_code="invalid_config_type_change",
        )
    if kind == "self_hosted":
        d.only_keys(data, ("type",), "config")
        config: dict[str, Any] = {"type": "self_hosted"}
    else:
        d.only_keys(data, ("type", "networking", "packages"), "config")
        config = {
            "type": "cloud",
            "networking": _resolve_networking(data.get("networking"), (current or {}).get("networking")),
            "packages": _resolve_packages(data.get("packages"), (current or {}).get("packages")),
        }
    environment_validate_config(config)
    return config


def environment_validate_config(config: dict[str, Any]) -> None:
    """The one place where package lists and their network policy are checked."""
    if config.get("type") != "cloud":
        return
    packages = config["packages"]
    total = 0
    for manager in PACKAGE_MANAGERS:
        for i, entry in enumerate(packages[manager]):
            text = d.expect_str(entry, f"config.packages.{manager}[{i}]", min_len=1, max_len=214)
            if not _PACKAGE.match(text):
                raise bad_request(
                    f"config.packages.{manager}[{i}]: {text!r} is not a package name "
                    "(with an optional version)."
                )
            total += 1
    if total > MAX_PACKAGES:
        raise bad_request(f"config.packages: at most {MAX_PACKAGES} packages are allowed, got {total}.")
    networking = config["networking"]
    if total and networking["type"] == "limited" and not networking["allow_package_managers"]:
        raise bad_request(
            "config.networking.allow_package_managers: must be true to install packages "
            "under limited networking."
        )
    validate_packages(packages)  # which managers this server's sandboxes can install


def environment_get(*, workspace: Workspace, environment_id: str) -> Environment:
    found = None
    if has_prefix(environment_id, "env"):
        found = Environment.objects.filter(workspace=workspace, id=environment_id).first()
    if found is None:
        raise not_found("Environment", environment_id, error_code="environment_not_found")
    return found


def environment_wire(environment: Environment) -> dict[str, Any]:
    if environment.is_self_hosted:
        # Its tools run on the user's workers (selfhosted/): no sandbox or package build here.
        wire = _environment_wire(environment)
        return {key: value for key, value in wire.items() if key not in _SANDBOX_KEYS}
    return _environment_wire(environment)


_SANDBOX_KEYS = frozenset({"build_status", "build_log", "sandbox_backend", "sandbox_unsafe"})


def _environment_wire(environment: Environment) -> dict[str, Any]:
    return {
        "id": environment.id,
        "type": "environment",
        "name": environment.name,
        "description": environment.description,
        "config": environment.config,
        "metadata": environment.metadata,
        "scope": environment.scope,
        # Galley extensions: the package build (issue 4) and how sandboxes are isolated on this server.
        "build_status": environment.build_status,
        "build_log": environment.build_log[-BUILD_LOG_TAIL:],
        "sandbox_backend": settings.GALLEY_SANDBOX_BACKEND,
        "sandbox_unsafe": backend_is_unsafe(),
        "created_at": iso(environment.created_at),
        "updated_at": iso(environment.updated_at),
        "archived_at": iso(environment.archived_at),
    }


def _check_scope(value: Any) -> str:
    if value is None or value == "organization":
        return "organization"
    if value == "account":
        raise bad_request("scope: only 'organization' is supported by this server.")
    raise bad_request(f"scope: must be 'organization' or 'account', got {value!r}.")


def _name_taken(name: str) -> ApiError:
    return conflict(f"name: an environment named {name!r} already exists.")


def environment_create(*, workspace: Workspace, body: dict[str, Any]) -> Environment:
    _check_body_keys(body, _ENV_FIELDS)
    name = d.expect_str(body.get("name"), "name", min_len=1, max_len=256)
    config = environment_resolve_config(body.get("config"))
    metadata = (
        check_metadata(d.expect_dict(body["metadata"], "metadata"))
        if body.get("metadata") is not None
        else {}
    )
    environment = Environment(
        id=new_id("env"),
        workspace=workspace,
        name=name,
        description=d.optional_str(body.get("description"), "description", max_len=d.DESCRIPTION_MAX),
        config=config,
        metadata=metadata,
        scope=_check_scope(body.get("scope")),
    )
    if Environment.objects.filter(workspace=workspace, name=name).exists():
        raise _name_taken(name)
    try:
        with transaction.atomic():
            environment.save(force_insert=True)
            packages_request_build(environment=environment)
            webhook_event_emit(workspace=workspace, type="environment.created", data={"id": environment.pk})
    except IntegrityError:
        raise _name_taken(name) from None  # lost a race with a concurrent create
    return environment


def environment_update(*, environment: Environment, body: dict[str, Any]) -> Environment:
    _check_body_keys(body, _ENV_FIELDS)
    with transaction.atomic():
        env = Environment.objects.select_for_update().get(pk=environment.pk)
        if env.is_archived:
            raise ApiError(
                400,
                f"Environment {env.id!r} is archived and cannot be updated.",
                error_code="environment_archived",
            )
        if body.get("name") is not None:
            env.name = d.expect_str(body["name"], "name", min_len=1, max_len=256)
        if "description" in body:
            env.description = d.optional_str(body["description"], "description", max_len=d.DESCRIPTION_MAX)
        config_changed = False
        if "config" in body:
            new_config = environment_resolve_config(body["config"], current=env.config)
            config_changed = new_config != env.config
            env.config = new_config
        if "metadata" in body and body["metadata"] is not None:
            env.metadata = patch_metadata(
                env.metadata, d.expect_dict(body["metadata"], "metadata"), empty_deletes=True
            )
        if "scope" in body:
            env.scope = _check_scope(body["scope"])
        if Environment.objects.filter(workspace=env.workspace, name=env.name).exclude(pk=env.pk).exists():
            raise _name_taken(env.name)
        env.updated_at = timezone.now()
        try:
            with transaction.atomic():
                env.save()
        except IntegrityError:
            raise _name_taken(env.name) from None
        if config_changed:
            packages_request_build(environment=env)
        webhook_event_emit(workspace=env.workspace_id, type="environment.updated", data={"id": env.pk})
    return env


def environment_archive(*, environment: Environment) -> Environment:
    now = timezone.now()
    with transaction.atomic():
        if Environment.objects.filter(pk=environment.pk, archived_at__isnull=True).update(
            archived_at=now, updated_at=now
        ):
            webhook_event_emit(
                workspace=environment.workspace_id, type="environment.archived", data={"id": environment.pk}
            )
    environment.refresh_from_db()
    return environment


def environment_delete(*, environment: Environment) -> dict[str, Any]:
    in_use = conflict(
        f"Environment {environment.id!r} is still used by sessions; "
        "delete them first or archive the environment."
    )
    if environment.sessions.exists():  # type: ignore[attr-defined]
        raise in_use
    environment_id = environment.id
    try:
        with transaction.atomic():
            workspace_id = environment.workspace_id
            environment.delete()
            webhook_event_emit(
                workspace=workspace_id, type="environment.deleted", data={"id": environment_id}
            )
    except ProtectedError:
        raise in_use from None  # a session was created between the check and the delete
    return {"id": environment_id, "type": "environment_deleted"}


def environment_list(
    *, workspace: Workspace, include_archived: bool = False, limit: int | None = None, page: str | None = None
) -> Page:
    qs = Environment.objects.filter(workspace=workspace)
    if not include_archived:
        qs = qs.filter(archived_at__isnull=True)
    return paginate(
        qs, fields=("created_at", "id"), limit=check_limit(limit, default=20, maximum=100), page=page
    )
