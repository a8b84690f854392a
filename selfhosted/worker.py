"""Galley's own self-hosted environment worker (`manage.py environment_worker`).

It is the official SDK's `EnvironmentWorker` (poll, ack, heartbeat, the session tool runner, stop),
given tools that run each call in Galley's bubblewrap sandbox on this host instead of in the
worker's own process. Each session gets a sandbox directory under this host's
GALLEY_SANDBOX_ROOT that outlives the work item, so a session that comes back to this host finds
its workspace. The worker needs no database: only the server's base URL and an environment key.
"""

import logging
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import anthropic
import anyio
from anthropic.lib.tools._beta_functions import ToolError
from django.conf import settings

from harness.tools import TOOLSET
from sandboxes.backends import SAFE_PATH, Limits, SandboxSpec, backend_get, sandbox_uid
from sandboxes.services import LiveSandbox, sandbox_provision, sandbox_root, sandbox_stop
from sandboxes.toolset import run_sandbox_tool

log = logging.getLogger(__name__)

SANDBOX_TOOLS = ("bash", "read", "write", "edit", "glob", "grep")


def host_sandbox(session_id: str) -> LiveSandbox:
    """This host's sandbox record for a session, built from settings alone (no session row here).
    The network is the host's: a self_hosted environment's networking is the user's own."""
    backend = backend_get()
    root = sandbox_root(session_id)
    uid = sandbox_uid(session_id) if os.geteuid() == 0 else os.geteuid()
    probe = SandboxSpec(root=root, uid=uid, share_network=True, limits=Limits.from_settings())
    workspace = backend.workspace_path(probe)
    env = {
        "HOME": workspace,
        "USER": "agent",
        "LOGNAME": "agent",
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": backend.tmp_path(probe),
        "PYTHONUNBUFFERED": "1",
        "PAGER": "cat",
        "GIT_PAGER": "cat",
        "PATH": SAFE_PATH,
    }
    spec = SandboxSpec(root=root, uid=uid, share_network=True, limits=Limits.from_settings(), env=env)
    sandbox_provision(root=root, uid=uid)
    return LiveSandbox(key=session_id, session_id=session_id, spec=spec, backend=backend)


class SandboxTool:
    """One agent-toolset tool, run in the session's sandbox. Shaped like the SDK's async tools
    (`name`, `to_dict()`, `async call(input)`), so the SDK's session tool runner dispatches it."""

    def __init__(self, name: str, live: LiveSandbox) -> None:
        self.name = name
        self.live = live
        self.cancel = threading.Event()

    def to_dict(self) -> dict[str, Any]:
        spec = TOOLSET[self.name]
        return {"name": self.name, "description": spec["description"], "input_schema": spec["input_schema"]}

    async def call(self, input: object) -> Any:
        tool_input = dict(input) if isinstance(input, dict) else {}
        try:
            outcome = await anyio.to_thread.run_sync(self._run, tool_input, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            self.cancel.set()  # the runner gave up on the call (timeout, lost lease): stop the command
            raise
        if outcome.is_error:
            raise ToolError(outcome.content)
        return outcome.content

    def _run(self, tool_input: dict[str, Any]) -> Any:
        self.cancel.clear()
        return run_sandbox_tool(live=self.live, name=self.name, tool_input=tool_input, cancel=self.cancel)

    def close(self) -> None:
        # The runner is done with the session: stop its shell; the workspace stays on disk.
        with self.live.lock:
            sandbox_stop(self.live)


def sandbox_tools(session_id: str) -> list[SandboxTool]:
    live = host_sandbox(session_id)
    return [SandboxTool(name, live) for name in SANDBOX_TOOLS]


def default_worker_id() -> str:
    return f"{socket.gethostname()}-galley-{uuid.uuid4().hex[:12]}"


def environment_worker(
    *,
    base_url: str,
    environment_id: str,
    environment_key: str,
    worker_id: str | None = None,
    max_idle: float | None = 60.0,
) -> Any:
    """The SDK's EnvironmentWorker with sandboxed tools; `await worker.run()` serves the queue."""
    client = anthropic.AsyncAnthropic(base_url=base_url, auth_token=environment_key, api_key=None)
    scratch = Path(settings.DATA_DIR) / "worker"
    scratch.mkdir(parents=True, exist_ok=True)

    def tools(context: Any) -> list[SandboxTool]:
        session = context.session
        return sandbox_tools(session.id)

    return client.beta.environments.work.worker(
        environment_id=environment_id,
        environment_key=environment_key,
        tools=tools,  # type: ignore[arg-type]  # duck-typed like the SDK's async tools
        # The SDK's own file tools are not used; this is only where it would put downloads.
        workdir=str(scratch),
        max_idle=max_idle,
        # Memory stores would be synced on the host, outside the sandbox the tools see.
        memory_sync_interval=None,
        worker_id=worker_id or default_worker_id(),
    )
