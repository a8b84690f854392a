"""Turn the console's plain HTML forms into API-shaped bodies, and API errors back into field
messages. The services validate; these functions only translate."""

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from django.http import QueryDict

from api.errors import ApiError

MODELS = [
    ("claude-sonnet-4-6", "Claude Sonnet 4.6 (balanced)"),
    ("claude-opus-4-8", "Claude Opus 4.8 (most capable)"),
    ("claude-haiku-4-5", "Claude Haiku 4.5 (fast, low cost)"),
    ("claude-sonnet-5-5", "Claude Sonnet 5.5"),
    ("claude-opus-5", "Claude Opus 5"),
]


def model_groups() -> list[tuple[str, list[tuple[str, str]]]]:
    """The agent form's model picker, grouped by provider (the default Anthropic one first)."""
    from providers.registry import picker_groups

    return [("Anthropic (default provider)", MODELS), *picker_groups()]


EFFORTS = ("low", "medium", "high", "xhigh", "max")
BUILTIN_TOOLS = [
    ("bash", "Run shell commands"),
    ("edit", "Edit files"),
    ("read", "Read files"),
    ("write", "Write files"),
    ("glob", "Find files by name"),
    ("grep", "Search inside files"),
    ("web_fetch", "Fetch web pages"),
    ("web_search", "Search the web"),
]
POLICIES = [
    ("always_allow", "Run without asking"),
    ("always_ask", "Ask me first"),
    ("auto", "Ask only when risky"),
]
SKILLS = [("xlsx", "Spreadsheets"), ("docx", "Word documents"), ("pptx", "Slides"), ("pdf", "PDF files")]
PACKAGE_MANAGERS = ("apt", "pip", "npm", "cargo", "gem", "go")
EXTRA_ROWS = 2

_FIELD = re.compile(r"^([A-Za-z_]+)(\[(\d+)\])?")


def error_field(exc: ApiError) -> tuple[str, str]:
    """('tools', message) from 'tools[2].name: ...' so the form can show it next to the field."""
    match = _FIELD.match(exc.message)
    if match and ":" in exc.message:
        head = exc.message.split(":", 1)[0]
        if head.startswith("config.networking"):
            return "networking", exc.message
        if head.startswith("config.packages"):
            return "packages", exc.message
        return match.group(1), exc.message
    return "form", exc.message


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.replace(",", "\n").splitlines() if line.strip()]


def _rows(post: QueryDict, prefix: str, fields: tuple[str, ...]) -> list[dict[str, str]]:
    """Repeated rows named prefix-<i>-<field>; rows with every field blank are dropped."""
    indexes = sorted(
        {int(k.split("-")[1]) for k in post if k.startswith(prefix + "-") and k.split("-")[1].isdigit()}
    )
    rows = []
    for i in indexes:
        row = {f: post.get(f"{prefix}-{i}-{f}", "").strip() for f in fields}
        if any(row[f] for f in fields if f not in ("policy", "version")):
            rows.append(row)
    return rows


def agent_body(post: QueryDict) -> tuple[dict[str, Any], dict[str, str]]:
    """The /v1/agents body for the agent form, and errors the form itself can tell (bad JSON)."""
    errors: dict[str, str] = {}
    model_id = post.get("model_other", "").strip() or post.get("model", "").strip()
    body: dict[str, Any] = {
        "name": post.get("name", "").strip(),
        "description": post.get("description", "").strip() or None,
        "system": post.get("system", "").strip() or None,
        "model": {"id": model_id, "effort": {"type": post.get("effort") or "high"}},
    }
    if not body["name"]:
        errors["name"] = "Give the agent a name."
    if not model_id:
        errors["model"] = "Choose a model."
    tools: list[dict[str, Any]] = []
    if post.get("toolset") == "on":
        configs = [
            {
                "name": name,
                "enabled": post.get(f"tool-{name}-enabled") == "on",
                "permission_policy": {"type": post.get(f"tool-{name}-policy") or "always_allow"},
            }
            for name, _label in BUILTIN_TOOLS
        ]
        tools.append({"type": "agent_toolset_20260401", "configs": configs})
    servers = []
    for row in _rows(post, "mcp", ("name", "url", "policy")):
        servers.append({"type": "url", "name": row["name"], "url": row["url"]})
        tools.append(
            {
                "type": "mcp_toolset",
                "mcp_server_name": row["name"],
                "default_config": {"permission_policy": {"type": row["policy"] or "always_ask"}},
            }
        )
    for i, row in enumerate(_rows(post, "custom", ("name", "description", "schema"))):
        schema_text = row["schema"] or '{"type": "object", "properties": {}}'
        try:
            schema = json.loads(schema_text)
        except ValueError as exc:
            errors["tools"] = f"Custom tool {row['name'] or i + 1}: the inputs are not valid JSON ({exc})."
            continue
        tools.append(
            {"type": "custom", "name": row["name"], "description": row["description"], "input_schema": schema}
        )
    body["tools"] = tools
    body["mcp_servers"] = servers
    body["skills"] = [
        {"type": "anthropic", "skill_id": s} for s, _label in SKILLS if post.get(f"skill-{s}") == "on"
    ] + [{"type": "custom", "skill_id": s} for s in post.getlist("cskill") if s]
    roster = []
    for row in _rows(post, "roster", ("agent", "version")):
        entry: dict[str, Any] = {"type": "agent", "id": row["agent"]}
        if row["version"]:
            if not row["version"].isdigit():
                errors["multiagent"] = (
                    "A pinned version is a whole number (or leave it blank for the latest)."
                )
                continue
            entry["version"] = int(row["version"])
        roster.append(entry)
    body["multiagent"] = {"type": "coordinator", "agents": roster} if roster else None
    return body, errors


def agent_form_state(definition: dict[str, Any] | None) -> dict[str, Any]:
    """Template state for the agent form from a stored definition (None = a new agent)."""
    d = definition or {}
    model = d.get("model") or {"id": MODELS[0][0], "effort": {"type": "high"}}
    toolset = next((t for t in d.get("tools", []) if t.get("type") == "agent_toolset_20260401"), None)
    configs = {c["name"]: c for c in (toolset or {}).get("configs", [])}
    builtin = [
        {
            "name": name,
            "label": label,
            "enabled": configs.get(name, {}).get("enabled", True),
            "policy": configs.get(name, {}).get("permission_policy", {}).get("type", "always_allow"),
        }
        for name, label in BUILTIN_TOOLS
    ]
    policies = {
        t["mcp_server_name"]: t.get("default_config", {})
        .get("permission_policy", {})
        .get("type", "always_ask")
        for t in d.get("tools", [])
        if t.get("type") == "mcp_toolset"
    }
    mcp = [
        {"name": s["name"], "url": s["url"], "policy": policies.get(s["name"], "always_ask")}
        for s in d.get("mcp_servers", [])
    ]
    custom = [
        {
            "name": t["name"],
            "description": t.get("description", ""),
            "schema": json.dumps(t.get("input_schema"), indent=2),
        }
        for t in d.get("tools", [])
        if t.get("type") == "custom"
    ]
    roster = [
        {"agent": a.get("id", ""), "version": a.get("version") or ""}
        for a in (d.get("multiagent") or {}).get("agents", [])
        if a.get("type") == "agent"
    ]
    known = {m for _label, choices in model_groups() for m, _ in choices}
    return {
        "name": d.get("name", ""),
        "description": d.get("description") or "",
        "system": d.get("system") or "",
        "model": model.get("id", ""),
        "model_other": "" if model.get("id") in known else model.get("id", ""),
        "effort": (model.get("effort") or {}).get("type", "high"),
        "toolset": toolset is not None or definition is None,
        "builtin": builtin,
        "mcp": mcp + [{"name": "", "url": "", "policy": "always_ask"}] * EXTRA_ROWS,
        "custom": custom + [{"name": "", "description": "", "schema": ""}] * EXTRA_ROWS,
        "roster": roster + [{"agent": "", "version": ""}] * EXTRA_ROWS,
        "skills": {s.get("skill_id") for s in d.get("skills", [])},
    }


def form_state_from_post(post: QueryDict) -> dict[str, Any]:
    """Re-show what the user typed after a failed save."""
    state = agent_form_state(None)
    state.update(
        {k: post.get(k, "") for k in ("name", "description", "system", "model", "model_other", "effort")}
    )
    state["toolset"] = post.get("toolset") == "on"
    state["builtin"] = [
        {
            "name": n,
            "label": label,
            "enabled": post.get(f"tool-{n}-enabled") == "on",
            "policy": post.get(f"tool-{n}-policy", "always_allow"),
        }
        for n, label in BUILTIN_TOOLS
    ]
    state["mcp"] = (
        _rows(post, "mcp", ("name", "url", "policy"))
        + [{"name": "", "url": "", "policy": "always_ask"}] * EXTRA_ROWS
    )
    state["custom"] = (
        _rows(post, "custom", ("name", "description", "schema"))
        + [{"name": "", "description": "", "schema": ""}] * EXTRA_ROWS
    )
    state["roster"] = (
        _rows(post, "roster", ("agent", "version")) + [{"agent": "", "version": ""}] * EXTRA_ROWS
    )
    state["skills"] = {s for s, _ in SKILLS if post.get(f"skill-{s}") == "on"} | set(post.getlist("cskill"))
    return state


def environment_body(post: QueryDict) -> tuple[dict[str, Any], dict[str, str]]:
    errors: dict[str, str] = {}
    name = post.get("name", "").strip()
    if not name:
        errors["name"] = "Give the environment a name."
    if post.get("networking") == "limited":
        networking: dict[str, Any] = {
            "type": "limited",
            "allowed_hosts": _lines(post.get("allowed_hosts", "")),
            "allow_package_managers": post.get("allow_package_managers") == "on",
            "allow_mcp_servers": post.get("allow_mcp_servers") == "on",
        }
    else:
        networking = {"type": "unrestricted"}
    packages: dict[str, Any] = {"type": "packages"}
    for manager in PACKAGE_MANAGERS:
        packages[manager] = _lines(post.get(f"packages-{manager}", "").replace(",", "\n"))
    body = {
        "name": name,
        "description": post.get("description", "").strip() or None,
        "config": {"type": "cloud", "networking": networking, "packages": packages},
    }
    return body, errors


def environment_form_state(
    config: dict[str, Any] | None, name: str = "", description: str = ""
) -> dict[str, Any]:
    c = config or {}
    networking = c.get("networking") or {"type": "unrestricted"}
    packages = c.get("packages") or {}
    return {
        "name": name,
        "description": description or "",
        "networking": networking.get("type", "unrestricted"),
        "allowed_hosts": "\n".join(networking.get("allowed_hosts", [])),
        "allow_package_managers": networking.get("allow_package_managers", False),
        "allow_mcp_servers": networking.get("allow_mcp_servers", False),
        "packages": [(m, "\n".join(packages.get(m, []))) for m in PACKAGE_MANAGERS],
    }


MAX_CENTS = 100_000_000_000  # $1 billion: far above any real budget, far below a 64-bit column


def cents_from_usd(text: str, field: str) -> int:
    """Whole US cents from what a person types as dollars ("2.50", "$1,200"); a 400 naming `field`
    for anything else, zero or a fraction of a cent."""
    cleaned = text.strip().removeprefix("$").replace(",", "")
    try:
        amount = Decimal(cleaned)
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite():
        raise ApiError(400, f"{field}: enter an amount in US dollars, for example 2.50.")
    if amount <= 0:
        raise ApiError(400, f"{field}: must be more than $0.00.")
    cents = amount * 100
    if cents > MAX_CENTS:
        raise ApiError(400, f"{field}: must be at most ${MAX_CENTS // 100:,}.")
    if cents != cents.to_integral_value():
        raise ApiError(400, f"{field}: use whole cents, for example 2.50.")
    return int(cents)


def session_start_body(post: Any, *, agent_id: str) -> dict[str, Any]:
    """The console's "Start a session" form as a sessions.create body: the same validation path as
    the API, so a bad value is the API's 400 message."""
    body: dict[str, Any] = {"agent": agent_id, "environment_id": post.get("environment_id", "")}
    if post.get("title", "").strip():
        body["title"] = post["title"].strip()
    vault_ids = [v for v in post.getlist("vault_ids") if v]
    if vault_ids:
        body["vault_ids"] = vault_ids
    resources: list[dict[str, Any]] = [{"type": "file", "file_id": f} for f in post.getlist("file_ids") if f]
    access = post.get("memory_access") or "read_write"
    resources += [
        {"type": "memory_store", "memory_store_id": m, "access": access}
        for m in post.getlist("memory_store_ids")
        if m
    ]
    url = post.get("repo_url", "").strip()
    if url:
        repo: dict[str, Any] = {"type": "github_repository", "url": url}
        if post.get("repo_branch", "").strip():
            repo["checkout"] = {"type": "branch", "name": post["repo_branch"].strip()}
        if post.get("repo_token", ""):
            repo["authorization_token"] = post["repo_token"]
        resources.append(repo)
    if resources:
        body["resources"] = resources
    budget = post.get("budget_usd", "").strip()
    if budget:
        cents = cents_from_usd(budget, "budget")
        body["budget"] = {"type": "limit", "max_list_cost": {"amount": str(cents), "currency": "USD"}}
    metadata: dict[str, str] = {}
    for number, line in enumerate(post.get("metadata", "").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ApiError(400, f"metadata: line {number} is not key=value.")
        metadata[key.strip()] = value.strip()
    if metadata:
        body["metadata"] = metadata
    return body


# Where a sessions.create error path points on the start form.
_START_PATHS = {
    "environment_id": "environment_id",
    "title": "title",
    "vault_ids": "vault_ids",
    "budget": "budget_usd",
    "metadata": "metadata",
}
_RESOURCE_FIELDS = {"file": "file_ids", "memory_store": "memory_store_ids", "github_repository": "repo_url"}
_QUOTED = re.compile(r"'([^']+)'")


def session_start_error_field(post: Any, exc: ApiError) -> str:
    """The start form's field a sessions.create error belongs to ("form" when none does): by the
    error's path (`budget.max_list_cost…`, `resources[2].checkout…`), or for a 404 by the id it names
    ("Vault 'vlt_…' was not found." belongs to the vault the user ticked)."""
    head = exc.message.split(":", 1)[0] if ":" in exc.message else ""
    root = _FIELD.match(head)
    if root and root.group(1) in _START_PATHS:
        return _START_PATHS[root.group(1)]
    if root and root.group(1) == "resources" and root.group(3) is not None:
        try:
            resources = session_start_body(post, agent_id="")["resources"]
            kind = resources[int(root.group(3))]["type"]
        except (ApiError, KeyError, IndexError, TypeError):
            return "form"
        if kind == "github_repository" and ".checkout" in head:
            return "repo_branch"
        if kind == "github_repository" and ".authorization_token" in head:
            return "repo_token"
        return _RESOURCE_FIELDS.get(kind, "form")
    named = _QUOTED.search(exc.message)
    if named:
        for field in ("environment_id", "vault_ids", "memory_store_ids", "file_ids"):
            if named.group(1) in post.getlist(field):
                return field
    return "form"


def session_start_state(post: Any | None) -> dict[str, Any]:
    """What the start form shows: empty, or what the user entered before a failed start (never the
    access token, a secret)."""
    if post is None:
        return {"memory_access": "read_write", "vault_ids": [], "memory_store_ids": [], "file_ids": []}
    state: dict[str, Any] = {
        k: post.get(k, "")
        for k in ("environment_id", "title", "message", "repo_url", "repo_branch", "budget_usd", "metadata")
    }
    state["memory_access"] = post.get("memory_access") or "read_write"
    for k in ("vault_ids", "memory_store_ids", "file_ids"):
        state[k] = [v for v in post.getlist(k) if v]
    state["token_given"] = bool(post.get("repo_token"))
    state["more"] = state["token_given"] or any(
        state[k] for k in ("vault_ids", "memory_store_ids", "file_ids", "repo_url", "budget_usd", "metadata")
    )
    return state


# --- vault credentials ------------------------------------------------------------------------------

CREDENTIAL_KINDS = [
    ("static_bearer", "Bearer token for an MCP server"),
    ("mcp_oauth", "OAuth access token for an MCP server (refreshed when it expires)"),
    ("environment_variable", "Secret for the sandbox (injected only on requests to allowed hosts)"),
]
TOKEN_ENDPOINT_AUTHS = [
    ("none", "None (public client)"),
    ("client_secret_basic", "Client secret, HTTP Basic"),
    ("client_secret_post", "Client secret, in the form body"),
]
# Each kind's fields are named <prefix>-<field> so the form can hold every kind at once (the page
# shows only the chosen kind's); the API path of a service error maps back to the field it concerns.
_CREDENTIAL_ERROR_FIELDS = {
    "static_bearer": {"auth.mcp_server_url": "bearer-url", "auth.token": "bearer-token"},
    "environment_variable": {
        "auth.secret_name": "env-name",
        "auth.secret_value": "env-value",
        "auth.networking": "env-hosts",
    },
    "mcp_oauth": {
        "auth.mcp_server_url": "oauth-url",
        "auth.access_token": "oauth-access_token",
        "auth.expires_at": "oauth-expires_at",
        "auth.refresh.refresh_token": "oauth-refresh_token",
        "auth.refresh.client_id": "oauth-client_id",
        "auth.refresh.token_endpoint_auth.client_secret": "oauth-client_secret",
        "auth.refresh.token_endpoint_auth": "oauth-token_endpoint_auth",
        "auth.refresh.token_endpoint": "oauth-token_endpoint",
        "auth.refresh.scope": "oauth-scope",
        "auth.refresh": "oauth-refresh_token",
    },
}
# The public (non-secret) fields a failed form may show again.
CREDENTIAL_PUBLIC_FIELDS = (
    "type",
    "display_name",
    "bearer-url",
    "env-name",
    "env-hosts",
    "oauth-url",
    "oauth-expires_at",
    "oauth-client_id",
    "oauth-token_endpoint",
    "oauth-token_endpoint_auth",
    "oauth-scope",
)


def credential_body(post: QueryDict) -> tuple[dict[str, Any], dict[str, str]]:
    """The credentials.create body for the chosen kind, from that kind's fields only, and the
    errors the form can tell by itself (a missing kind or secret)."""
    kind = post.get("type", "")
    errors: dict[str, str] = {}
    body: dict[str, Any] = {"display_name": post.get("display_name", "").strip() or None}
    secret_missing = "Enter the secret. It is stored encrypted and never shown again."
    if kind == "static_bearer":
        body["auth"] = {
            "type": kind,
            "mcp_server_url": post.get("bearer-url", "").strip(),
            "token": post.get("bearer-token", ""),
        }
        if not body["auth"]["token"]:
            errors["bearer-token"] = secret_missing
    elif kind == "environment_variable":
        hosts = _lines(post.get("env-hosts", ""))
        body["auth"] = {
            "type": kind,
            "secret_name": post.get("env-name", "").strip(),
            "secret_value": post.get("env-value", ""),
            "networking": {"type": "limited", "allowed_hosts": hosts} if hosts else {"type": "unrestricted"},
        }
        if not body["auth"]["secret_value"]:
            errors["env-value"] = secret_missing
    elif kind == "mcp_oauth":
        auth: dict[str, Any] = {
            "type": kind,
            "mcp_server_url": post.get("oauth-url", "").strip(),
            "access_token": post.get("oauth-access_token", ""),
            "expires_at": post.get("oauth-expires_at", "").strip() or None,
        }
        if not auth["access_token"]:
            errors["oauth-access_token"] = secret_missing
        refresh_token = post.get("oauth-refresh_token", "")
        endpoint_auth = post.get("oauth-token_endpoint_auth", "") or "none"
        if refresh_token:
            method: dict[str, Any] = {"type": endpoint_auth}
            if endpoint_auth != "none":
                method["client_secret"] = post.get("oauth-client_secret", "")
            auth["refresh"] = {
                "refresh_token": refresh_token,
                "client_id": post.get("oauth-client_id", "").strip(),
                "token_endpoint": post.get("oauth-token_endpoint", "").strip(),
                "token_endpoint_auth": method,
                "scope": post.get("oauth-scope", "").strip() or None,
            }
        elif post.get("oauth-client_id", "").strip() or post.get("oauth-token_endpoint", "").strip():
            errors["oauth-refresh_token"] = (
                "Enter the refresh token too, or clear the refresh settings (client id, token endpoint)."
            )
        body["auth"] = auth
    else:
        errors["type"] = "Choose what kind of credential this is."
    return body, errors


def credential_error_field(kind: str, exc: ApiError) -> str:
    """The form field a credentials.create error belongs to ("form" when none does)."""
    path = exc.message.split(":", 1)[0]
    fields = _CREDENTIAL_ERROR_FIELDS.get(kind, {})
    for prefix in sorted(fields, key=len, reverse=True):
        if path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "["):
            return fields[prefix]
    return "display_name" if path == "display_name" else "form"
