"""What the model may call: tool definitions from the agent snapshot, permission policies, and the
adapter to the sandbox's built-in toolset (spec 10)."""

import hashlib
import importlib
import re
import threading
from dataclasses import dataclass
from typing import Any

TOOLSET_TYPE = "agent_toolset_20260401"

_STR = {"type": "string"}
TOOLSET: dict[str, dict[str, Any]] = {
    "bash": {
        "description": "Run a command in a persistent bash shell in the session's sandbox. "
        "Set restart to true (without a command) to restart the shell.",
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {**_STR, "description": "The shell command to run."},
                "restart": {"type": "boolean", "description": "Restart the bash session."},
                "timeout_ms": {"type": "integer", "description": "Per-call timeout in milliseconds."},
            },
        },
    },
    "read": {
        "description": "Read a file. Optionally a 1-indexed inclusive [start_line, end_line] range.",
        "input_schema": {
            "type": "object",
            "properties": {
                "file_path": {**_STR, "description": "Path of the file to read."},
                "view_range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
            },
            "required": ["file_path"],
        },
    },
    "write": {
        "description": "Write a file, replacing its whole contents.",
        "input_schema": {
            "type": "object",
            "properties": {"file_path": _STR, "content": _STR},
            "required": ["file_path", "content"],
        },
    },
    "edit": {
        "description": "Replace old_string with new_string in a file; old_string must occur exactly once "
        "unless replace_all is true.",
        "input_schema": {
            "type": "object",
            "properties": {
                "file_path": _STR,
                "old_string": _STR,
                "new_string": _STR,
                "replace_all": {"type": "boolean"},
            },
            "required": ["file_path", "old_string", "new_string"],
        },
    },
    "glob": {
        "description": "List paths matching a glob pattern (e.g. **/*.py), newest first.",
        "input_schema": {
            "type": "object",
            "properties": {"pattern": _STR, "path": _STR},
            "required": ["pattern"],
        },
    },
    "grep": {
        "description": "Search file contents for a regular expression and return matching lines.",
        "input_schema": {
            "type": "object",
            "properties": {"pattern": _STR, "path": _STR},
            "required": ["pattern"],
        },
    },
    "web_fetch": {
        "description": "Fetch a URL and return its content as text.",
        "input_schema": {"type": "object", "properties": {"url": _STR}, "required": ["url"]},
    },
    "web_search": {
        "description": "Search the web and return result titles, URLs and snippets.",
        "input_schema": {"type": "object", "properties": {"query": _STR}, "required": ["query"]},
    },
}
# Safe to run again after a crash lost their result; everything else may have had a side effect.
READ_ONLY = frozenset({"read", "glob", "grep", "web_fetch", "web_search"})


@dataclass
class ToolSpec:
    name: str
    kind: str  # "builtin" | "custom" | "mcp"
    policy: str  # "always_allow" | "always_ask" | "auto" ("none" for custom tools)
    definition: dict[str, Any]  # what the model sees: name, description, input_schema
    mcp_server_name: str | None = None
    mcp_tool: str | None = None  # the MCP tool's own name (the model sees mcp_tool_name(...))


def _policy(value: Any, default: str) -> str:
    if isinstance(value, dict):
        value = value.get("type")
    return value if value in ("always_allow", "always_ask", "auto") else default


def tool_catalog(agent: dict[str, Any]) -> dict[str, ToolSpec]:
    """The enabled tools of an agent snapshot, keyed by the name the model calls."""
    catalog: dict[str, ToolSpec] = {}
    for tool in agent.get("tools") or []:
        kind = tool.get("type")
        if kind == TOOLSET_TYPE:
            default = tool.get("default_config") or {}
            default_enabled = default.get("enabled", True) is not False
            default_policy = _policy(default.get("permission_policy"), "always_allow")
            configs = {c.get("name") or c.get("type"): c for c in tool.get("configs") or []}
            for name, spec in TOOLSET.items():
                config = configs.get(name, {})
                enabled = config.get("enabled", default_enabled)
                if enabled is False:
                    continue
                policy = _policy(config.get("permission_policy"), default_policy)
                catalog[name] = ToolSpec(name, "builtin", policy, {"name": name, **spec})
        elif kind == "custom":
            definition = {
                "name": tool["name"],
                "description": tool.get("description") or "",
                "input_schema": tool.get("input_schema") or {"type": "object"},
            }
            catalog[tool["name"]] = ToolSpec(tool["name"], "custom", "none", definition)
    return catalog


_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


def mcp_tool_name(server: str, tool: str) -> str:
    """The name the model calls an MCP tool by: prefixed so it cannot collide with built-in or
    custom tools (which cannot start with "mcp__" and a server name), within the API's 128 chars."""
    name = f"mcp__{_UNSAFE.sub('_', server)}__{_UNSAFE.sub('_', tool)}"
    if len(name) <= 128:
        return name
    digest = hashlib.sha256(f"{server}\0{tool}".encode()).hexdigest()[:10]
    return f"{name[:117]}_{digest}"


def mcp_servers(agent: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Server name -> (url, its mcp_toolset) for every declared server that has a toolset."""
    toolsets = {
        t.get("mcp_server_name"): t for t in agent.get("tools") or [] if t.get("type") == "mcp_toolset"
    }
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for server in agent.get("mcp_servers") or []:
        name, url = server.get("name"), server.get("url")
        if isinstance(name, str) and isinstance(url, str) and name in toolsets:
            out[name] = (url, toolsets[name])
    return out


def mcp_specs(server: str, toolset: dict[str, Any], tools: list[Any]) -> list[ToolSpec]:
    """The discovered tools of one server that its toolset enables, with their policies."""
    default = toolset.get("default_config") or {}
    default_enabled = default.get("enabled", True) is not False
    default_policy = _policy(default.get("permission_policy"), "always_ask")
    configs = {c.get("name"): c for c in toolset.get("configs") or []}
    specs: list[ToolSpec] = []
    for tool in tools:
        config = configs.get(tool.name, {})
        if config.get("enabled", default_enabled) is False:
            continue
        policy = _policy(config.get("permission_policy"), default_policy)
        name = mcp_tool_name(server, tool.name)
        definition = {"name": name, "description": tool.description, "input_schema": tool.input_schema}
        specs.append(ToolSpec(name, "mcp", policy, definition, mcp_server_name=server, mcp_tool=tool.name))
    return specs


@dataclass
class ToolRun:
    content: list[dict[str, Any]]
    is_error: bool


def run_builtin(
    *, session: Any, name: str, tool_input: dict[str, Any], tool_use_id: str, cancel: threading.Event | None
) -> ToolRun:
    """Run an agent-toolset tool in the session's sandbox (sandboxes.toolset, issue 4)."""
    try:
        toolset = importlib.import_module("sandboxes.toolset")
    except ImportError:
        return ToolRun(
            [{"type": "text", "text": f"Built-in tools are unavailable on this server; {name} did not run."}],
            True,
        )
    try:
        outcome = toolset.run_tool(
            session=session, name=name, tool_input=tool_input, tool_use_id=tool_use_id, cancel=cancel
        )
    except Exception as exc:  # the contract says run_tool never raises; a bug must not kill the turn
        return ToolRun([{"type": "text", "text": f"{name} failed: {type(exc).__name__}"}], True)
    return ToolRun(list(outcome.content), bool(outcome.is_error))


def prewarm_builtin(*, session_id: str, agent: dict[str, Any]) -> None:
    """While the model is asked, start the session's sandbox if its agent has a sandbox tool
    (sandboxes.toolset.sandbox_prewarm): the first tool call then finds its shell running."""
    try:
        toolset = importlib.import_module("sandboxes.toolset")
    except ImportError:
        return
    toolset.sandbox_prewarm(session_id=session_id, agent=agent)
