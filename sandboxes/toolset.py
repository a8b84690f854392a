"""The tools of `agent_toolset_20260401`, run for the harness.

bash runs in the session's persistent sandboxed shell. read, write, edit, glob and grep are the official SDK's
reference implementations (`anthropic.lib.tools.agent_toolset`), run in a child of the worker that has
entered the sandbox's mount namespace as the sandbox's user: they see the sandbox's paths (/workspace, /tmp)
and nothing of the host, and their own symlink-aware confinement keeps them in /workspace and /tmp. web_fetch
and web_search run in the worker with their own domain rules.
"""

import base64
import json
import logging
import os
import select
import signal
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio._backends._asyncio  # noqa: F401 - imported before any fork, never inside the child
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

from sandboxes.backends import SandboxError
from sandboxes.repos import RepositoryError
from sessions.models import Session

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
            from sandboxes.web import web_fetch

            return web_fetch(session=session, tool_input=tool_input, config=config)
        if name == "web_search":
            from sandboxes.web import web_search

            return web_search(session=session, tool_input=tool_input, config=config)
        waited = _await_packages(session, cancel)
        if waited is not None:
            return waited
        from sandboxes.services import sandbox_get, sandbox_reap_idle

        sandbox_reap_idle()
        live = sandbox_get(session=session, thread_id=thread_id)
        memory = _memory_pull(session, live)
        if name == "bash":
            outcome = _run_bash(live, tool_input, cancel)
        else:
            outcome = _run_file_tool(live, name, tool_input)
        if name in WRITING_TOOLS:
            note = _capture_outputs(session, live)
            extra = [{"type": "text", "text": note}] if note else []
            if memory:
                extra += _memory_push(session, live)
            if extra:
                outcome = ToolOutcome(content=[*outcome.content, *extra], is_error=outcome.is_error)
        return outcome
    except SandboxError as exc:
        return _text(f"{name}: sandbox unavailable: {exc}", True)
    except RepositoryError as exc:
        _report_repository_error(session, exc)
        return _text(f"{name}: the session's repository could not be prepared: {exc}", True)
    except Exception:
        logger.exception("tool %s failed unexpectedly (session %s)", name, session.id)
        return _text(f"{name}: internal error while running the tool", True)


_prewarming: set[str] = set()
_prewarming_lock = threading.Lock()
# Long-lived threads: bubblewrap dies with the thread that started it (--die-with-parent is the parent
# death signal, which follows the thread), so a start must not run on a thread that ends after it.
_prewarmer: ThreadPoolExecutor | None = None


def sandbox_prewarm(*, session_id: str, agent: dict[str, Any]) -> bool:
    """Start the session's sandbox on a background thread while the model is asked: its first tool call
    then finds the shell running (or waits on the start under way, on the sandbox's lock) instead of
    starting bubblewrap, the volume and the egress proxy after the model has asked. Only for an agent
    with an enabled sandbox tool, when this process has no shell of the session, with at most
    GALLEY_SANDBOX_PREWARM_AT_ONCE starts under way. True when a start was begun. Never raises."""
    at_once = settings.GALLEY_SANDBOX_PREWARM_AT_ONCE
    if at_once <= 0:
        return False
    configs = toolset_configs(agent)
    if not any(configs.get(name, {}).get("enabled") for name in SANDBOX_TOOLS):
        return False
    from sandboxes.services import sandbox_running

    if sandbox_running(session_id):
        return False
    global _prewarmer
    with _prewarming_lock:
        if session_id in _prewarming or len(_prewarming) >= at_once:
            return False
        _prewarming.add(session_id)
        if _prewarmer is None:
            _prewarmer = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="sandbox-prewarm")
        prewarmer = _prewarmer
    try:
        prewarmer.submit(_prewarm, session_id)
    except RuntimeError:  # no thread to be had (the process is exiting): the first tool call starts it
        with _prewarming_lock:
            _prewarming.discard(session_id)
        return False
    return True


def _prewarm(session_id: str) -> None:
    from django.db import connection

    from agents.models import BuildStatus
    from sandboxes.services import sandbox_get, sandbox_shell
    from sessions.models import Status

    try:
        session = Session.objects.select_related("environment").get(pk=session_id)
        if session.status == Status.TERMINATED or session.environment.build_status != BuildStatus.READY:
            return  # a terminated session starts nothing; a build is waited for by the tool call itself
        live = sandbox_get(session=session)
        with live.lock:
            sandbox_shell(live)  # starts it unless a tool call already has
    except Exception:  # the first tool call starts it again and reports what fails
        logger.info("sandbox prewarm of session %s failed", session_id, exc_info=True)
    finally:
        with _prewarming_lock:
            _prewarming.discard(session_id)
        connection.close()


def _report_repository_error(session: Session, exc: RepositoryError) -> None:
    """A clone failure is a session.error naming the repository (the next tool call tries again)."""
    from django.db import transaction

    from sessions.services import NewEvent, events_append

    error = {
        "type": exc.error_type,
        "message": str(exc),
        "repository_url": exc.url,
        "retry_status": {"type": "exhausted"},
    }
    with transaction.atomic():
        events_append(session=session.id, events=[NewEvent("session.error", {"error": error})])


def run_sandbox_tool(
    *, live: Any, name: str, tool_input: dict[str, Any], cancel: threading.Event | None = None
) -> ToolOutcome:
    """Run bash or a file tool in an already built sandbox record (no database needed): what a
    self-hosted environment worker (`selfhosted/worker.py`) runs on its own host."""
    try:
        if name == "bash":
            return _run_bash(live, tool_input, cancel)
        if name in FILE_TOOLS:
            return _run_file_tool(live, name, tool_input)
        return _text(f"{name}: not a sandbox tool", True)
    except SandboxError as exc:
        return _text(f"{name}: sandbox unavailable: {exc}", True)
    except Exception:
        logger.exception("tool %s failed unexpectedly (sandbox %s)", name, live.key)
        return _text(f"{name}: internal error while running the tool", True)


def _await_packages(session: Session, cancel: threading.Event | None) -> ToolOutcome | None:
    from agents.models import BuildStatus
    from sandboxes.packages import packages_wait

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
    from sandboxes.quota import QuotaWatcher, volume_full, volume_is_image
    from sandboxes.services import sandbox_memory_reset, sandbox_shell
    from sandboxes.shell import AnyEvent

    if tool_input.get("restart"):
        with live.lock:
            if live.shell is not None:
                live.shell.kill()
                live.shell = None
            for saved in ("cwd", "env"):  # a restart is a fresh shell: forget the saved state too
                try:
                    (live.spec.state / saved).unlink()
                except FileNotFoundError:
                    pass
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
    limit = settings.GALLEY_SANDBOX_WORKSPACE_BYTES
    watcher: QuotaWatcher | None = None
    with live.lock:
        # Without a memory cgroup the reaper's memory watch may have killed the shell between commands.
        held_before = sandbox_memory_reset(live)
        try:
            shell = sandbox_shell(live)
        except RuntimeError as exc:
            return _text(f"bash: {exc}", True)
        kernel_quota = volume_is_image(live.spec.root)
        if kernel_quota:
            result = shell.run(
                command,
                timeout=timeout,
                cancel=AnyEvent(cancel, live.memory_event),
                cap=settings.GALLEY_SANDBOX_OUTPUT_BYTES,
            )
        else:
            # No kernel quota on this host: a watcher kills the command once it writes past the limit.
            with QuotaWatcher(root=live.spec.root, limit=limit, cancel=cancel) as watcher:
                result = shell.run(
                    command,
                    timeout=timeout,
                    cancel=AnyEvent(watcher.event, live.memory_event),
                    cap=settings.GALLEY_SANDBOX_OUTPUT_BYTES,
                )
            if watcher.tripped:
                result.cancelled = False
        held = sandbox_memory_reset(live)
        if held is not None:
            result.cancelled = False
        if result.exit_code is None:
            live.shell = None  # killed or dead: the next call starts a new one, restoring cwd and exports
    output = result.output.rstrip("\n")
    notes: list[str] = []
    is_error = False
    if live.egress is not None:
        denials, dropped = live.egress.drain_denials()
        for host, reason in denials:
            notes.append(f"[egress proxy refused a connection to {host}: {reason}]")
        if dropped:
            notes.append(f"[egress proxy refused {dropped} more connection(s) not listed]")
    memory = live.spec.limits.memory_bytes
    if held_before is not None:
        notes.append(
            f"[killed: the sandbox's processes held {held_before} bytes of memory, past its limit of "
            f"{memory} bytes, while no command ran; the shell was restarted before this command "
            "(working directory and exported variables are kept)]"
        )
        is_error = True
    if held is not None:
        notes.append(
            f"[killed: the sandbox's processes held {held} bytes of memory, past its limit of {memory} bytes "
            "(all its processes together); the command was killed and the shell restarted (working directory "
            "and exported variables are kept)]"
        )
        is_error = True
    elif watcher is not None and watcher.tripped:
        notes.append(
            f"[killed: the command wrote past the sandbox's storage limit of {limit} bytes (shared by "
            "/workspace, /tmp and /mnt/session/outputs); the shell was restarted. Delete files to continue]"
        )
        is_error = True
    elif result.cancelled:
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
    if not (watcher is not None and watcher.tripped) and volume_full(live.spec.root, limit=limit):
        # Image: one statvfs() call. Watcher hosts: a walk that stops at the limit.
        notes.append(
            f"[workspace size limit exceeded: the sandbox's storage limit of {limit} bytes (shared by "
            "/workspace, /tmp and /mnt/session/outputs) is used up, so writes fail with 'No space left on "
            "device'; delete files to continue]"
        )
        is_error = True
    text = output
    if notes:
        text = (text.rstrip("\n") + "\n" if text.strip() else "") + "\n".join(notes)
    return _text(text, is_error)


# --- file tools (the SDK's reference implementations) -------------------------------------------------------


FILE_TOOLS = {
    "read": beta_read_tool,
    "write": beta_write_tool,
    "edit": beta_edit_tool,
    "glob": beta_glob_tool,
    "grep": beta_grep_tool,
}
FILE_TOOL_TIMEOUT = 60.0


def _call_sdk_tool(
    name: str,
    workdir: str,
    allowed_roots: list[str],
    args: dict[str, Any],
    read_only_roots: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run one SDK file tool; {"result": ...} or {"error": text}."""
    ctx = AgentToolContext(
        workdir=workdir,
        allowed_roots=[Path(r) for r in allowed_roots],
        read_only_roots=[Path(r) for r in read_only_roots],
    )
    return _call_tool(FILE_TOOLS[name](ctx), name, args)


def _call_tool(tool: Any, name: str, args: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"result": anyio.run(tool.call, args)}
    except ToolError as exc:
        return {"error": _tool_error_text(exc)}
    except (TypeError, ValueError) as exc:  # input validation by the SDK (pydantic)
        return {"error": f"{name}: invalid input: {exc}"}


_warm = False
_warm_lock = threading.Lock()
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def _warm_up() -> None:
    """Run every file tool path once in the worker, so the forked child (which cannot see the worker's files
    once inside the sandbox's mount namespace) finds every module it needs already imported."""
    global _warm
    with _warm_lock:
        if _warm:
            return
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "dot.png").write_bytes(base64.b64decode(PNG_1PX))
            Path(tmp, "doc.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
            calls: list[tuple[str, dict[str, Any]]] = [
                ("write", {"file_path": "d/a.txt", "content": "x\ny\n"}),
                ("read", {"file_path": "d/a.txt"}),
                ("read", {"file_path": "d/a.txt", "view_range": [1, 1]}),
                ("read", {"file_path": "dot.png"}),
                ("read", {"file_path": "doc.pdf"}),
                ("read", {"file_path": "missing"}),
                ("read", {"file_path": "/etc/hostname"}),
                ("read", {"file_path": 5}),
                ("edit", {"file_path": "d/a.txt", "old_string": "x", "new_string": "z"}),
                ("edit", {"file_path": "d/a.txt", "old_string": "q", "new_string": "z"}),
                ("edit", {"file_path": "d/a.txt", "old_string": "z", "new_string": "q", "replace_all": True}),
                ("glob", {"pattern": "**/*.txt"}),
                ("glob", {"pattern": "*.none", "path": "d"}),
                ("grep", {"pattern": "q"}),
                ("grep", {"pattern": "(", "path": "d"}),
            ]
            for name, args in calls:
                _call_sdk_tool(name, tmp, [], args)
        _warm = True


def _run_file_tool(live: Any, name: str, tool_input: dict[str, Any]) -> ToolOutcome:
    from sandboxes.backends import BwrapBackend
    from sandboxes.quota import volume_is_image, volume_usage
    from sandboxes.services import sandbox_provision

    spec = live.spec
    sandbox_provision(root=spec.root, uid=spec.uid)
    if name == "write" and isinstance(tool_input.get("content"), str):
        limit = settings.GALLEY_SANDBOX_WORKSPACE_BYTES
        size = len(tool_input["content"].encode())
        if volume_is_image(spec.root):
            st = os.statvfs(spec.volume)
            over = size > st.f_bavail * st.f_frsize  # the kernel would stop it part-way
        else:
            over = volume_usage(spec.root, limit=limit) + size > limit
        if over:
            return _text(
                f"write: the workspace size limit ({limit} bytes, shared by /workspace, /tmp and "
                "/mnt/session/outputs) would be exceeded; delete files first",
                True,
            )
    if isinstance(live.backend, BwrapBackend):
        answer = _in_sandbox(live, name, tool_input)
    else:
        answer = _on_host(live, name, tool_input)
    if "error" in answer:
        return _text(answer["error"], True)
    result = answer["result"]
    if isinstance(result, str):
        return _text(result)
    blocks = [dict(block) for block in result]
    return ToolOutcome(content=blocks or [{"type": "text", "text": "(empty)"}], is_error=False)


WRITING_TOOLS = frozenset({"bash", "write", "edit"})
SANDBOX_TOOLS = frozenset({"bash", *FILE_TOOLS})  # the tools that run in the session's sandbox


def _memory_pull(session: Session, live: Any) -> bool:
    """Memory stores mounted in the sandbox (memory.mounts): other writers' changes come in before
    each call. False when the sandbox mounts none."""
    if not live.spec.memory_mounts:
        return False
    from memory.mounts import memory_pull

    owner = live.spec.uid if os.geteuid() == 0 else None
    try:
        memory_pull(session_id=session.id, root=live.spec.root, uid=owner)
    except Exception:  # the call still runs on the copy the sandbox has
        logger.exception("memory pull failed (session %s)", session.id)
    return True


def _memory_push(session: Session, live: Any) -> list[dict[str, Any]]:
    """The agent's memory changes go out after a writing call; conflicts join the tool result."""
    from memory.mounts import memory_sync_after_tool

    owner = live.spec.uid if os.geteuid() == 0 else None
    return memory_sync_after_tool(session_id=session.id, root=live.spec.root, uid=owner)


def _capture_outputs(session: Session, live: Any) -> str:
    """Files the agent left in /mnt/session/outputs become session-scoped files (listed by scope_id).
    Only that directory is walked, and unchanged files are not read again. Returns a note for the model
    when some files were left out (the session's outputs quota)."""
    from files.services import file_capture_outputs_report

    try:
        if not live.spec.outputs.is_dir():
            return ""
        report = file_capture_outputs_report(
            session=session, outputs_dir=live.spec.outputs, seen=live.outputs_seen
        )
    except Exception:  # capture must never turn a finished tool call into a failure
        logger.exception("capturing outputs failed (session %s)", session.id)
        return ""
    if not report.over_quota:
        return ""
    names = ", ".join(report.over_quota[:5]) + (" and more" if len(report.over_quota) > 5 else "")
    return (
        f"[outputs not saved: {len(report.over_quota)} file(s) in /mnt/session/outputs ({names}) were not "
        f"captured because this session's outputs already hold the limit of {report.quota_bytes} bytes]"
    )


def _in_sandbox(live: Any, name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    """Run the SDK tool in a child process inside the sandbox's mount namespace, as the sandbox's uid.

    The tool then sees exactly what bash sees (/workspace, /tmp, read-only system directories, nothing else)
    and writes as the sandbox's user, so no symlink trick in the workspace makes the worker touch a host file.
    """
    from sandboxes.services import sandbox_shell

    with live.lock:
        try:
            shell = sandbox_shell(live)
            shell.last_used = time.monotonic()  # in use: the idle reaper must not stop it meanwhile
            inner = shell.inner_pid()
            ns = os.open(f"/proc/{inner}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except (RuntimeError, OSError) as exc:
            return {"error": f"{name}: the sandbox did not start: {exc}"}
    uid = live.spec.uid
    _warm_up()
    tool = FILE_TOOLS[name](
        AgentToolContext(
            workdir="/workspace",
            # Repositories cloned outside /workspace are the agent's to edit too.
            allowed_roots=[
                Path("/tmp"),
                Path("/mnt/session"),
                Path("/mnt/memory"),
                *(Path(target) for _, target in live.spec.binds),
            ],
        )
    )
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the child only runs the tool
        pid = os.fork()
    if pid == 0:  # child: never returns
        status = 0
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
            os.setns(ns, os.CLONE_NEWNS)
            if os.geteuid() == 0:
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            os.chdir("/workspace")
            os.environ.clear()  # nothing of the worker's environment goes near the sandbox
            os.environ.update({"PATH": "/usr/bin:/bin", "HOME": "/workspace", "LANG": "C.UTF-8"})
            answer = _call_tool(tool, name, dict(tool_input))
            data = json.dumps(answer).encode()
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent, then exit
            data = json.dumps(
                {"error": f"{name}: failed in the sandbox: {type(exc).__name__}: {exc}"}
            ).encode()
            status = 1
        try:
            view = memoryview(data)
            while view:
                written = os.write(write_end, view)
                view = view[written:]
        finally:
            os._exit(status)
    os.close(write_end)
    os.close(ns)
    chunks: list[bytes] = []
    deadline = time.monotonic() + FILE_TOOL_TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([read_end], [], [], max(0.0, remaining))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                return {"error": f"{name}: timed out after {FILE_TOOL_TIMEOUT:g}s"}
            chunk = os.read(read_end, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    try:
        return dict(json.loads(b"".join(chunks)))
    except ValueError:
        return {"error": f"{name}: the tool ended without an answer"}


def _on_host(live: Any, name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    """The unsafe development backend: the tool runs in the worker on the host directories (memory
    stores included: the system prompt names their host directories)."""
    spec = live.spec
    stores = [source for source, _target, _writable in spec.memory_mounts]
    read_only = tuple(source for source, _target, writable in spec.memory_mounts if not writable)
    return _call_sdk_tool(name, str(spec.workspace), [str(spec.tmp), *stores], dict(tool_input), read_only)


def _tool_error_text(exc: ToolError) -> str:
    content: Any = exc.content if hasattr(exc, "content") else str(exc)
    if isinstance(content, str):
        return content
    return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict)) or str(exc)
