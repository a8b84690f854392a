"""The tools of `agent_toolset_20260401`, run for the harness.

bash runs in the session's persistent sandboxed shell. read, write, edit, glob and grep are the official SDK's
reference implementations (`anthropic.lib.tools.agent_toolset`), run by the worker against the sandbox's
workspace directory: their symlink-aware confinement keeps them inside it, and paths are translated between
the sandbox's view (/workspace, /tmp) and the host directories so neither the model nor the log ever sees a
host path. web_fetch and web_search run in the worker with their own domain rules.
"""

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anthropic.lib.tools._beta_functions import ToolError
from anthropic.lib.tools.agent_toolset import (
    AgentToolContext,
    beta_bash_tool,
    beta_edit_tool,
    beta_glob_tool,
    beta_grep_tool,
    beta_read_tool,
    beta_write_tool,
)
from django.conf import settings

from sessions.models import Session
from sessions.sandbox.backends import SandboxError

logger = logging.getLogger(__name__)

TOOL_NAMES = ("bash", "read", "write", "edit", "glob", "grep", "web_fetch", "web_search")
TOOLSET_TYPE = "agent_toolset_20260401"
PACKAGE_WAIT_SECONDS = 900.0


@dataclass
class ToolOutcome:
    content: list[dict[str, Any]]
    is_error: bool


def _text(text: str, is_error: bool = False) -> ToolOutcome:
    return ToolOutcome(content=[{"type": "text", "text": text or "(no output)"}], is_error=is_error)


DESCRIPTIONS = {
    "bash": "Run a command in a persistent bash shell inside the session's sandbox. The working directory "
    "and exported variables persist between calls; the workspace is /workspace. `restart: true` restarts "
    "the shell. `timeout_ms` bounds the command (default 120000).",
    "read": "Read a file from the sandbox (absolute, or relative to /workspace). `view_range: [start, end]` "
    "reads a range of lines (1-based, end -1 for the end). Images and PDFs come back as content blocks.",
    "write": "Write a file in the sandbox (overwriting it), creating parent directories as needed.",
    "edit": "Replace `old_string` with `new_string` in a file. `old_string` must occur exactly once unless "
    "`replace_all` is true.",
    "glob": "List files matching a glob pattern (relative, e.g. `**/*.py`) under `path` "
    "(default /workspace), newest first.",
    "grep": "Search file contents for a regular expression under `path` (default /workspace); prints "
    "`file:line:text`.",
    "web_fetch": "Fetch a web page by URL and return its text content.",
    "web_search": "Search the web; returns titles, URLs and snippets.",
}

WEB_FETCH_SCHEMA = {
    "type": "object",
    "properties": {"url": {"type": "string", "description": "The http(s) URL to fetch"}},
    "required": ["url"],
}
WEB_SEARCH_SCHEMA = {
    "type": "object",
    "properties": {"query": {"type": "string", "description": "The search query"}},
    "required": ["query"],
}


def _sdk_tools() -> dict[str, Any]:
    ctx = AgentToolContext(workdir="/")
    return {
        "bash": beta_bash_tool(ctx),
        "read": beta_read_tool(ctx),
        "write": beta_write_tool(ctx),
        "edit": beta_edit_tool(ctx),
        "glob": beta_glob_tool(ctx),
        "grep": beta_grep_tool(ctx),
    }


def toolset_configs(agent_tools: Any) -> dict[str, dict[str, Any]]:
    """Per-tool resolved config of the agent's agent_toolset_20260401 (absent toolset: no tools)."""
    tools = agent_tools.get("tools", []) if isinstance(agent_tools, dict) else (agent_tools or [])
    result: dict[str, dict[str, Any]] = {}
    for toolset in tools:
        if not isinstance(toolset, dict) or toolset.get("type") != TOOLSET_TYPE:
            continue
        default_enabled = (toolset.get("default_config") or {}).get("enabled", True)
        by_name = {c.get("name"): c for c in toolset.get("configs") or [] if isinstance(c, dict)}
        for name in TOOL_NAMES:
            config = dict(by_name.get(name) or {})
            config["enabled"] = config.get("enabled", default_enabled) is not False
            result[name] = config
    return result


def tool_definitions(agent_tools_config: Any) -> list[dict[str, Any]]:
    """{name, description, input_schema} of the enabled toolset tools, for the model."""
    configs = toolset_configs(agent_tools_config)
    sdk = _sdk_tools()
    definitions = []
    for name in TOOL_NAMES:
        if not configs.get(name, {}).get("enabled"):
            continue
        if name in sdk:
            schema = dict(sdk[name].to_dict()["input_schema"])
            schema.pop("title", None)
            schema.pop("description", None)
        else:
            schema = WEB_FETCH_SCHEMA if name == "web_fetch" else WEB_SEARCH_SCHEMA
        definitions.append({"name": name, "description": DESCRIPTIONS[name], "input_schema": schema})
    return definitions


def run_tool(
    *,
    session: Session,
    name: str,
    tool_input: dict[str, Any],
    tool_use_id: str,
    cancel: threading.Event | None = None,
    thread_id: str | None = None,
) -> ToolOutcome:
    """Run one toolset tool for the session. Never raises for a tool failure."""
    try:
        configs = toolset_configs(session.agent_snapshot or {})
        config = configs.get(name)
        if config is None:
            return _text(f"{name}: unknown tool (not part of this agent's agent_toolset_20260401)", True)
        if not config.get("enabled"):
            return _text(f"{name}: this tool is disabled for this agent", True)
        if not isinstance(tool_input, dict):
            return _text(f"{name}: input must be an object", True)
        if name == "web_fetch":
            from sessions.sandbox.web import web_fetch

            return web_fetch(session=session, tool_input=tool_input, config=config)
        if name == "web_search":
            from sessions.sandbox.web import web_search

            return web_search(session=session, tool_input=tool_input, config=config)
        waited = _await_packages(session, cancel)
        if waited is not None:
            return waited
        from sessions.sandbox.services import sandbox_get, sandbox_reap_idle

        sandbox_reap_idle()
        live = sandbox_get(session=session, thread_id=thread_id)
        if name == "bash":
            return _run_bash(live, tool_input, cancel)
        return _run_file_tool(live, name, tool_input)
    except SandboxError as exc:
        return _text(f"{name}: sandbox unavailable: {exc}", True)
    except Exception:
        logger.exception("tool %s failed unexpectedly (session %s)", name, session.id)
        return _text(f"{name}: internal error while running the tool", True)


def _await_packages(session: Session, cancel: threading.Event | None) -> ToolOutcome | None:
    from agents.models import BuildStatus
    from sessions.sandbox.packages import packages_wait

    status = session.environment.build_status
    if status == BuildStatus.BUILDING:
        status = packages_wait(
            environment_id=session.environment_id, timeout=PACKAGE_WAIT_SECONDS, cancel=cancel
        )
        session.environment.refresh_from_db(fields=["build_status", "build_log"])
    if status == BuildStatus.FAILED:
        return _text(
            "the environment's packages failed to build; see the environment's build log. "
            "Fix the package list and update the environment.",
            True,
        )
    if status == BuildStatus.BUILDING:
        return _text("the environment's packages are still building; try again shortly", True)
    return None


# --- bash ---------------------------------------------------------------------------------------------------


def _run_bash(live: Any, tool_input: dict[str, Any], cancel: threading.Event | None) -> ToolOutcome:
    from sessions.sandbox.services import sandbox_shell, workspace_bytes

    if tool_input.get("restart"):
        with live.lock:
            if live.shell is not None:
                live.shell.kill()
                live.shell = None
            try:
                sandbox_shell(live)
            except RuntimeError as exc:
                return _text(f"bash: {exc}", True)
        return _text("bash session restarted")
    command = tool_input.get("command")
    if not isinstance(command, str) or not command.strip():
        return _text("bash: command is required", True)
    timeout_ms = tool_input.get("timeout_ms")
    timeout = settings.GALLEY_SANDBOX_TIMEOUT_SECONDS
    if timeout_ms is not None:
        if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms <= 0:
            return _text("bash: timeout_ms must be a positive integer", True)
        timeout = timeout_ms / 1000.0
    with live.lock:
        try:
            shell = sandbox_shell(live)
        except RuntimeError as exc:
            return _text(f"bash: {exc}", True)
        result = shell.run(command, timeout=timeout, cancel=cancel, cap=settings.GALLEY_SANDBOX_OUTPUT_BYTES)
        if result.exit_code is None:
            live.shell = None  # killed or dead: the next call starts a new one, restoring cwd and exports
    output = result.output.rstrip("\n")
    notes: list[str] = []
    is_error = False
    if live.egress is not None:
        for host, reason in live.egress.drain_denials():
            notes.append(f"[egress proxy refused a connection to {host}: {reason}]")
    if result.cancelled:
        notes.append("[interrupted: the command was stopped by the user; the shell was restarted]")
        is_error = True
    elif result.timed_out:
        notes.append(
            f"[timed out after {timeout:g}s: the command was killed and the shell restarted "
            "(working directory and exported variables are kept)]"
        )
        is_error = True
    elif result.shell_died:
        notes.append("[the shell exited; a new one will start on the next command]")
        is_error = True
    elif result.exit_code:
        notes.append(f"[exit code: {result.exit_code}]")
        is_error = True
    limit = settings.GALLEY_SANDBOX_WORKSPACE_BYTES
    used = workspace_bytes(live.spec.root, stop_after=limit)
    if used > limit:
        notes.append(
            f"[workspace size limit exceeded: over {limit} bytes used in /workspace and /tmp; "
            "delete files to continue]"
        )
        is_error = True
    text = output
    if notes:
        text = (text.rstrip("\n") + "\n" if text.strip() else "") + "\n".join(notes)
    return _text(text, is_error)


# --- file tools (the SDK's reference implementations) -------------------------------------------------------


def _run_file_tool(live: Any, name: str, tool_input: dict[str, Any]) -> ToolOutcome:
    from sessions.sandbox.services import sandbox_provision, workspace_bytes

    spec, backend = live.spec, live.backend
    sandbox_provision(root=spec.root, uid=spec.uid)
    host_ws, host_tmp = str(spec.workspace), str(spec.tmp)
    in_ws, in_tmp = backend.workspace_path(spec), backend.tmp_path(spec)

    def to_host(path: Any) -> Any:
        if not isinstance(path, str):
            return path
        for inside, host in ((in_ws, host_ws), (in_tmp, host_tmp)):
            if path == inside or path.startswith(inside.rstrip("/") + "/"):
                return host + path[len(inside) :]
        if os.path.isabs(path):
            return "/nonexistent-outside-sandbox" + path  # never a host path: fails the confinement check
        return path

    def to_sandbox(text: str) -> str:
        return (
            text.replace(host_ws, in_ws).replace(host_tmp, in_tmp).replace("/nonexistent-outside-sandbox", "")
        )

    args = dict(tool_input)
    for key in ("file_path", "path"):
        if key in args:
            args[key] = to_host(args[key])
    if name == "write" and isinstance(args.get("content"), str):
        limit = settings.GALLEY_SANDBOX_WORKSPACE_BYTES
        if workspace_bytes(spec.root, stop_after=limit) + len(args["content"].encode()) > limit:
            return _text(f"write: workspace size limit ({limit} bytes) would be exceeded", True)
    ctx = AgentToolContext(workdir=host_ws, allowed_roots=[Path(host_tmp)])
    factories = {
        "read": beta_read_tool,
        "write": beta_write_tool,
        "edit": beta_edit_tool,
        "glob": beta_glob_tool,
        "grep": beta_grep_tool,
    }
    tool = factories[name](ctx)
    try:
        result = anyio.run(tool.call, args)
    except ToolError as exc:
        return _text(to_sandbox(_tool_error_text(exc)), True)
    except (TypeError, ValueError) as exc:  # input validation by the SDK (pydantic)
        return _text(to_sandbox(f"{name}: invalid input: {exc}"), True)
    if name in ("write", "edit") and os.geteuid() == 0 and isinstance(args.get("file_path"), str):
        _give_to_sandbox(Path(args["file_path"]), Path(host_ws), Path(host_tmp), spec.uid)
    if isinstance(result, str):
        return _text(to_sandbox(result))
    blocks: list[dict[str, Any]] = []
    for block in result:
        item: dict[str, Any] = dict(block)
        if item.get("type") == "text":
            item = {"type": "text", "text": to_sandbox(str(item.get("text", ""))) or "(empty)"}
        blocks.append(item)
    return ToolOutcome(content=blocks or [{"type": "text", "text": "(empty)"}], is_error=False)


def _tool_error_text(exc: ToolError) -> str:
    content: Any = exc.content if hasattr(exc, "content") else str(exc)
    if isinstance(content, str):
        return content
    return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict)) or str(exc)


def _give_to_sandbox(target: Path, *roots_and_uid: Any) -> None:
    """Files the worker wrote belong to the sandbox's uid, so the sandbox can change them later."""
    *roots, uid = roots_and_uid
    try:
        real = target.resolve()
    except OSError:
        return
    for root in roots:
        root = Path(root).resolve()
        if real == root or not real.is_relative_to(root):
            continue
        current = real
        while current != root:
            try:
                os.chown(current, uid, uid, follow_symlinks=False)
            except OSError:
                pass
            current = current.parent
