"""Resolution of an agent definition from a request body into the fully resolved wire form (spec 2, 10,
11). Pure functions: every check names the offending field, and each resolver accepts its own output,
so a stored definition can be re-resolved unchanged."""

import json
import re
from typing import Any

from api.errors import ApiError, bad_request

EFFORT_LEVELS = ("low", "medium", "high", "xhigh", "max")
DEFAULT_EFFORT = "high"
SPEEDS = ("standard", "fast")
POLICIES = ("always_allow", "always_ask", "auto")
BUILTIN_TOOLS = ("bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search")
ANTHROPIC_SKILLS = ("xlsx", "docx", "pptx", "pdf")
MAX_TOOLS = 256
MAX_MCP_SERVERS = 20
MAX_SKILLS = 20
MAX_DOMAINS = 64
NAME_MAX = 256
DESCRIPTION_MAX = 2048
SYSTEM_MAX = 100_000
MAX_INPUT_SCHEMA = 65_536

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_DOMAIN = re.compile(
    r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)


# --- small typed readers ------------------------------------------------------------------------------


def expect_dict(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"{field}: expected an object.")
    return value


def expect_list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise bad_request(f"{field}: expected an array.")
    return value


def expect_str(value: Any, field: str, *, min_len: int = 0, max_len: int | None = None) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{field}: expected a string.")
    if len(value) < min_len:
        raise bad_request(f"{field}: must not be empty." if min_len == 1 else f"{field}: too short.")
    if max_len is not None and len(value) > max_len:
        raise bad_request(f"{field}: must be at most {max_len} characters.")
    return value


def expect_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"{field}: expected a boolean.")
    return value


def optional_str(value: Any, field: str, *, max_len: int | None = None) -> str | None:
    """A nullable text field where "" and null both mean "unset"."""
    if value is None:
        return None
    text = expect_str(value, field, max_len=max_len)
    return text or None


def only_keys(data: dict[str, Any], allowed: tuple[str, ...], field: str) -> None:
    for key in data:
        if key not in allowed:
            raise bad_request(f"{field}.{key}: unknown field.")


def require_type(data: dict[str, Any], field: str, allowed: tuple[str, ...]) -> str:
    kind = data.get("type")
    if kind not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise bad_request(f"{field}.type: must be one of {choices}, got {kind!r}.")
    return str(kind)


def check_url(value: Any, field: str) -> str:
    url = expect_str(value, field, min_len=1, max_len=2048)
    if not re.match(r"^https?://[^\s/?#]+", url):
        raise bad_request(f"{field}: must be an http(s) URL, got {url!r}.")
    return url


# --- model, identity ----------------------------------------------------------------------------------


def resolve_effort(value: Any, field: str) -> dict[str, str]:
    level = value.get("type") if isinstance(value, dict) else value
    if isinstance(value, dict):
        only_keys(value, ("type",), field)
    if level not in EFFORT_LEVELS:
        raise bad_request(f"{field}: must be one of {', '.join(EFFORT_LEVELS)}, got {level!r}.")
    return {"type": str(level)}


def resolve_model(
    value: Any, *, current: dict[str, Any] | None = None, field: str = "model"
) -> dict[str, Any]:
    """A model string or config object -> {id, effort:{type}, speed, inference_geo}. On update the
    object replaces the stored one, except that an omitted effort keeps the stored effort."""
    if isinstance(value, str):
        value = {"id": value}
    data = expect_dict(value, field)
    only_keys(data, ("id", "effort", "speed", "inference_geo"), field)
    model_id = expect_str(data.get("id"), f"{field}.id", min_len=1, max_len=256)
    if data.get("effort") is not None:
        effort = resolve_effort(data["effort"], f"{field}.effort")
    elif current is not None and "effort" not in data:
        effort = dict(current.get("effort") or {"type": DEFAULT_EFFORT})
    else:
        effort = {"type": DEFAULT_EFFORT}
    speed = data.get("speed") or "standard"
    if speed not in SPEEDS:
        raise bad_request(f"{field}.speed: must be 'standard' or 'fast', got {speed!r}.")
    geo = optional_str(data.get("inference_geo"), f"{field}.inference_geo", max_len=64)
    return {"id": model_id, "effort": effort, "speed": speed, "inference_geo": geo}


def resolve_execution_identity(value: Any, field: str = "execution_identity") -> dict[str, Any]:
    if value is None:
        return {"type": "service_account"}
    data = expect_dict(value, field)
    kind = require_type(data, field, ("service_account", "aws_role"))
    if kind == "service_account":
        only_keys(data, ("type",), field)
        return {"type": "service_account"}
    only_keys(data, ("type", "role_arn"), field)
    role_arn = expect_str(data.get("role_arn"), f"{field}.role_arn", min_len=1, max_len=2048)
    if not role_arn.startswith("arn:"):
        raise bad_request(f"{field}.role_arn: must be an IAM role ARN (arn:...).")
    return {"type": "aws_role", "role_arn": role_arn}


# --- tools ----------------------------------------------------------------------------------------------


def resolve_policy(value: Any, field: str) -> dict[str, str]:
    kind = value.get("type") if isinstance(value, dict) else value
    if isinstance(value, dict):
        only_keys(value, ("type",), field)
    if kind not in POLICIES:
        raise bad_request(f"{field}: must be one of {', '.join(POLICIES)}, got {kind!r}.")
    return {"type": str(kind)}


def _resolve_default_config(value: Any, field: str, *, default_policy: str) -> dict[str, Any]:
    data = {} if value is None else expect_dict(value, field)
    only_keys(data, ("enabled", "permission_policy"), field)
    enabled = True if data.get("enabled") is None else expect_bool(data["enabled"], f"{field}.enabled")
    policy = data.get("permission_policy")
    return {
        "enabled": enabled,
        "permission_policy": (
            resolve_policy(policy, f"{field}.permission_policy")
            if policy is not None
            else {"type": default_policy}
        ),
    }


def _resolve_domains(data: dict[str, Any], field: str) -> tuple[list[str] | None, list[str] | None]:
    lists: dict[str, list[str] | None] = {}
    for key in ("allowed_domains", "blocked_domains"):
        raw = data.get(key)
        if raw is None:
            lists[key] = None
            continue
        items = expect_list(raw, f"{field}.{key}")
        if not items:
            raise bad_request(f"{field}.{key}: must not be empty; omit it instead.")
        if len(items) > MAX_DOMAINS:
            raise bad_request(f"{field}.{key}: at most {MAX_DOMAINS} domains are allowed.")
        for i, item in enumerate(items):
            domain = expect_str(item, f"{field}.{key}[{i}]", min_len=1, max_len=253)
            if not _DOMAIN.match(domain):
                raise bad_request(f"{field}.{key}[{i}]: {domain!r} is not a hostname.")
        lists[key] = [str(d).lower() for d in items]
    if lists["allowed_domains"] is not None and lists["blocked_domains"] is not None:
        raise bad_request(f"{field}: set allowed_domains or blocked_domains, not both.")
    return lists["allowed_domains"], lists["blocked_domains"]


def _resolve_url_source(value: Any, field: str, *, user_input: bool) -> dict[str, Any] | None:
    if value is None:
        return None
    kinds = ("all", "none") if user_input else ("all", "none", "only", "except")
    if isinstance(value, str):
        value = {"type": value}
    data = expect_dict(value, field)
    kind = require_type(data, field, kinds)
    if kind in ("all", "none"):
        only_keys(data, ("type",), field)
        return {"type": kind}
    only_keys(data, ("type", "tools"), field)
    tools = expect_list(data.get("tools"), f"{field}.tools")
    if not tools:
        raise bad_request(f"{field}.tools: must name at least one tool.")
    refs = []
    for i, ref in enumerate(tools):
        ref_data = expect_dict(ref, f"{field}.tools[{i}]")
        only_keys(ref_data, ("type", "name"), f"{field}.tools[{i}]")
        require_type(ref_data, f"{field}.tools[{i}]", ("tool_reference",))
        name = expect_str(ref_data.get("name"), f"{field}.tools[{i}].name", min_len=1, max_len=128)
        refs.append({"type": "tool_reference", "name": name})
    return {"type": kind, "tools": refs}


def _resolve_url_sources(value: Any, field: str) -> dict[str, Any] | None:
    if value is None:
        return None
    data = expect_dict(value, field)
    only_keys(data, ("user_input", "client_tool_results", "server_tool_results"), field)
    resolved = {
        "user_input": _resolve_url_source(data.get("user_input"), f"{field}.user_input", user_input=True),
        "client_tool_results": _resolve_url_source(
            data.get("client_tool_results"), f"{field}.client_tool_results", user_input=False
        ),
        "server_tool_results": _resolve_url_source(
            data.get("server_tool_results"), f"{field}.server_tool_results", user_input=False
        ),
    }
    if all(source is not None and source["type"] == "none" for source in resolved.values()):
        raise bad_request(f"{field}: setting every URL source to 'none' leaves web_fetch unusable.")
    return resolved


def _resolve_user_location(value: Any, field: str) -> dict[str, Any] | None:
    if value is None:
        return None
    data = expect_dict(value, field)
    only_keys(data, ("type", "city", "region", "country", "timezone"), field)
    require_type(data, field, ("approximate",))
    resolved: dict[str, Any] = {"type": "approximate"}
    for key in ("city", "region", "country", "timezone"):
        resolved[key] = optional_str(data.get(key), f"{field}.{key}", max_len=255)
    return resolved


_EXTRA_KEYS = {
    "web_fetch": ("allowed_domains", "blocked_domains", "max_content_tokens", "url_sources"),
    "web_search": ("allowed_domains", "blocked_domains", "user_location"),
}


def _resolve_builtin_config(
    data: dict[str, Any], field: str, *, name: str, default: dict[str, Any]
) -> dict[str, Any]:
    extras = _EXTRA_KEYS.get(name, ())
    only_keys(data, ("name", "type", "enabled", "permission_policy", *extras), field)
    if data.get("type") is not None and data["type"] != name:
        raise bad_request(f"{field}.type: must be {name!r} (the tool's name), got {data['type']!r}.")
    enabled = (
        default["enabled"]
        if data.get("enabled") is None
        else expect_bool(data["enabled"], f"{field}.enabled")
    )
    policy = data.get("permission_policy")
    resolved: dict[str, Any] = {
        "name": name,
        "type": name,
        "enabled": enabled,
        "permission_policy": (
            resolve_policy(policy, f"{field}.permission_policy")
            if policy is not None
            else dict(default["permission_policy"])
        ),
    }
    if name in _EXTRA_KEYS:
        allowed, blocked = _resolve_domains(data, field)
        resolved["allowed_domains"] = allowed
        resolved["blocked_domains"] = blocked
    if name == "web_fetch":
        tokens = data.get("max_content_tokens")
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            raise bad_request(f"{field}.max_content_tokens: must be a positive integer.")
        resolved["max_content_tokens"] = tokens
        resolved["url_sources"] = _resolve_url_sources(data.get("url_sources"), f"{field}.url_sources")
    if name == "web_search":
        resolved["user_location"] = _resolve_user_location(
            data.get("user_location"), f"{field}.user_location"
        )
    return resolved


def _resolve_agent_toolset(data: dict[str, Any], field: str) -> dict[str, Any]:
    only_keys(data, ("type", "default_config", "configs"), field)
    default = _resolve_default_config(
        data.get("default_config"), f"{field}.default_config", default_policy="always_allow"
    )
    given: dict[str, dict[str, Any]] = {}
    for i, raw in enumerate(expect_list(data.get("configs") or [], f"{field}.configs")):
        entry = expect_dict(raw, f"{field}.configs[{i}]")
        name = entry.get("name")
        if name not in BUILTIN_TOOLS:
            raise bad_request(
                f"{field}.configs[{i}].name: must be one of {', '.join(BUILTIN_TOOLS)}, got {name!r}."
            )
        if name in given:
            raise bad_request(f"{field}.configs[{i}].name: {name!r} is configured twice.")
        given[str(name)] = _resolve_builtin_config(
            entry, f"{field}.configs[{i}]", name=str(name), default=default
        )
    configs = [
        given.get(name) or _resolve_builtin_config({}, f"{field}.configs", name=name, default=default)
        for name in BUILTIN_TOOLS
    ]
    return {"type": "agent_toolset_20260401", "default_config": default, "configs": configs}


def _resolve_mcp_toolset(data: dict[str, Any], field: str) -> dict[str, Any]:
    only_keys(data, ("type", "mcp_server_name", "default_config", "configs"), field)
    server = expect_str(data.get("mcp_server_name"), f"{field}.mcp_server_name", min_len=1, max_len=255)
    default = _resolve_default_config(
        data.get("default_config"), f"{field}.default_config", default_policy="always_ask"
    )
    configs = []
    seen: set[str] = set()
    for i, raw in enumerate(expect_list(data.get("configs") or [], f"{field}.configs")):
        entry = expect_dict(raw, f"{field}.configs[{i}]")
        only_keys(entry, ("name", "enabled", "permission_policy"), f"{field}.configs[{i}]")
        name = expect_str(entry.get("name"), f"{field}.configs[{i}].name", min_len=1, max_len=128)
        if name in seen:
            raise bad_request(f"{field}.configs[{i}].name: {name!r} is configured twice.")
        seen.add(name)
        enabled = entry.get("enabled")
        policy = entry.get("permission_policy")
        configs.append(
            {
                "name": name,
                "enabled": default["enabled"]
                if enabled is None
                else expect_bool(enabled, f"{field}.configs[{i}].enabled"),
                "permission_policy": (
                    resolve_policy(policy, f"{field}.configs[{i}].permission_policy")
                    if policy is not None
                    else dict(default["permission_policy"])
                ),
            }
        )
    return {"type": "mcp_toolset", "mcp_server_name": server, "default_config": default, "configs": configs}


def _resolve_custom_tool(data: dict[str, Any], field: str) -> dict[str, Any]:
    only_keys(data, ("type", "name", "description", "input_schema"), field)
    name = expect_str(data.get("name"), f"{field}.name", min_len=1)
    if not _TOOL_NAME.match(name):
        raise bad_request(
            f"{field}.name: must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-', got {name!r}."
        )
    description = expect_str(data.get("description"), f"{field}.description", min_len=1, max_len=10_000)
    schema = expect_dict(data.get("input_schema"), f"{field}.input_schema")
    try:
        # Free-form JSON that is stored as given: standard JSON only (no NaN/Infinity) and bounded.
        encoded = json.dumps(schema, allow_nan=False)
    except ValueError:
        raise bad_request(f"{field}.input_schema: NaN and Infinity are not JSON numbers.") from None
    if len(encoded) > MAX_INPUT_SCHEMA:
        raise bad_request(f"{field}.input_schema: must be at most {MAX_INPUT_SCHEMA} bytes of JSON.")
    if schema.get("type") != "object":
        raise bad_request(f"{field}.input_schema.type: must be 'object'.")
    if schema.get("properties") is not None:
        expect_dict(schema["properties"], f"{field}.input_schema.properties")
    if schema.get("required") is not None:
        required = expect_list(schema["required"], f"{field}.input_schema.required")
        for i, item in enumerate(required):
            expect_str(item, f"{field}.input_schema.required[{i}]")
    return {"type": "custom", "name": name, "description": description, "input_schema": dict(schema)}


def resolve_tools(value: Any, field: str = "tools") -> list[dict[str, Any]]:
    if value is None:
        return []
    items = expect_list(value, field)
    tools: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool name -> where it was declared

    def claim(name: str, where: str) -> None:
        if name in names:
            raise ApiError(
                400,
                f"{where}: tool name {name!r} conflicts with {names[name]}.",
                error_code="tool_name_conflict",
            )
        names[name] = where

    mcp_servers_seen: set[str] = set()
    count = 0
    for i, raw in enumerate(items):
        where = f"{field}[{i}]"
        data = expect_dict(raw, where)
        kind = require_type(data, where, ("agent_toolset_20260401", "mcp_toolset", "custom"))
        if kind == "agent_toolset_20260401":
            tool = _resolve_agent_toolset(data, where)
            for name in BUILTIN_TOOLS:
                claim(name, where)
            count += len(BUILTIN_TOOLS)
        elif kind == "mcp_toolset":
            tool = _resolve_mcp_toolset(data, where)
            if tool["mcp_server_name"] in mcp_servers_seen:
                raise ApiError(
                    400,
                    f"{where}.mcp_server_name: {tool['mcp_server_name']!r} already has an mcp_toolset.",
                    error_code="tool_name_conflict",
                )
            mcp_servers_seen.add(tool["mcp_server_name"])
            count += max(1, len(tool["configs"]))
        else:
            tool = _resolve_custom_tool(data, where)
            claim(tool["name"], where)
            count += 1
        tools.append(tool)
    if count > MAX_TOOLS:
        raise bad_request(f"{field}: at most {MAX_TOOLS} tools are allowed across all toolsets, got {count}.")
    return tools


def resolve_mcp_servers(value: Any, field: str = "mcp_servers") -> list[dict[str, Any]]:
    if value is None:
        return []
    items = expect_list(value, field)
    if len(items) > MAX_MCP_SERVERS:
        raise bad_request(f"{field}: at most {MAX_MCP_SERVERS} MCP servers are allowed, got {len(items)}.")
    servers = []
    seen: set[str] = set()
    for i, raw in enumerate(items):
        data = expect_dict(raw, f"{field}[{i}]")
        only_keys(data, ("type", "name", "url"), f"{field}[{i}]")
        require_type(data, f"{field}[{i}]", ("url",))
        name = expect_str(data.get("name"), f"{field}[{i}].name", min_len=1, max_len=255)
        if name in seen:
            raise bad_request(f"{field}[{i}].name: {name!r} is used by another MCP server.")
        seen.add(name)
        servers.append({"type": "url", "name": name, "url": check_url(data.get("url"), f"{field}[{i}].url")})
    return servers


def check_mcp_references(tools: list[dict[str, Any]], servers: list[dict[str, Any]]) -> None:
    """Every mcp_toolset names a declared server, and every declared server is used by a toolset."""
    names = {server["name"] for server in servers}
    used = set()
    for i, tool in enumerate(tools):
        if tool["type"] == "mcp_toolset":
            if tool["mcp_server_name"] not in names:
                raise bad_request(
                    f"tools[{i}].mcp_server_name: no MCP server named {tool['mcp_server_name']!r} "
                    "in mcp_servers."
                )
            used.add(tool["mcp_server_name"])
    for i, server in enumerate(servers):
        if server["name"] not in used:
            raise bad_request(
                f"mcp_servers[{i}]: server {server['name']!r} is not referenced by any mcp_toolset."
            )


def resolve_skills(value: Any, field: str = "skills") -> list[dict[str, Any]]:
    if value is None:
        return []
    items = expect_list(value, field)
    if len(items) > MAX_SKILLS:
        raise bad_request(f"{field}: at most {MAX_SKILLS} skills are allowed, got {len(items)}.")
    skills = []
    seen: set[tuple[str, str]] = set()
    for i, raw in enumerate(items):
        where = f"{field}[{i}]"
        data = expect_dict(raw, where)
        only_keys(data, ("type", "skill_id", "version"), where)
        kind = require_type(data, where, ("anthropic", "custom"))
        skill_id = expect_str(data.get("skill_id"), f"{where}.skill_id", min_len=1, max_len=128)
        if kind == "anthropic" and skill_id not in ANTHROPIC_SKILLS:
            raise bad_request(
                f"{where}.skill_id: must be one of {', '.join(ANTHROPIC_SKILLS)}, got {skill_id!r}."
            )
        if kind == "custom" and not skill_id.startswith("skill_"):
            raise bad_request(f"{where}.skill_id: custom skill ids start with 'skill_', got {skill_id!r}.")
        version = data.get("version")
        if isinstance(version, int) and not isinstance(version, bool):
            version = str(version)
        version = optional_str(version, f"{where}.version", max_len=128) or "latest"
        if (kind, skill_id) in seen:
            raise bad_request(f"{where}.skill_id: {skill_id!r} is listed twice.")
        seen.add((kind, skill_id))
        skills.append({"type": kind, "skill_id": skill_id, "version": version})
    return skills
