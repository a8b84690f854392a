"""Galley's own self-hosted environment worker (`manage.py environment_worker`).

It is the official SDK's `EnvironmentWorker` (poll, ack, heartbeat, the session tool runner, stop),
given tools that run each call in Galley's bubblewrap sandbox on this host instead of in the
worker's own process. Each session gets a sandbox directory under this host's
GALLEY_SANDBOX_ROOT that outlives the work item, so a session that comes back to this host finds
its workspace. The worker needs no database: only the server's base URL and an environment key.
The session's skills (with the built-in skills' Python libraries) and memory stores are mounted in
the sandbox as on Galley's own hosts, through the API with the work item's sessions token
(`selfhosted/worker_memory.py`).
"""

import logging
import os
import shutil
import socket
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import anthropic
import anyio
from anthropic.lib.tools._beta_functions import ToolError
from django.conf import settings

from harness.tools import TOOLSET
from sandboxes.backends import SAFE_PATH, Limits, SandboxSpec, backend_get, sandbox_uid
from sandboxes.services import LiveSandbox, sandbox_env, sandbox_provision, sandbox_root, sandbox_stop
from sandboxes.toolset import WRITING_TOOLS, ToolOutcome, run_sandbox_tool
from selfhosted.worker_memory import WorkerMemory, skill_mounts, worker_memory
from skills.catalog import builtin_get, builtin_ids
from skills.runtime import PYTHON_MOUNT, SKILLS_MOUNT, skill_python_ensure

log = logging.getLogger(__name__)

SANDBOX_TOOLS = ("bash", "read", "write", "edit", "glob", "grep")


def host_sandbox(session_id: str) -> LiveSandbox:
    """This host's sandbox record for a session, built from settings alone (no session row here).
    The network is the host's: a self_hosted environment's networking is the user's own."""
    backend = backend_get()
    root = sandbox_root(session_id)
    uid = sandbox_uid(session_id) if os.geteuid() == 0 else os.geteuid()
    probe = SandboxSpec(root=root, uid=uid, share_network=True, limits=Limits.from_settings())
    env = {**sandbox_env(backend, probe), "PATH": SAFE_PATH}
    spec = SandboxSpec(root=root, uid=uid, share_network=True, limits=Limits.from_settings(), env=env)
    sandbox_provision(root=root, uid=uid)
    return LiveSandbox(key=session_id, session_id=session_id, spec=spec, backend=backend)


class SandboxTool:
    """One agent-toolset tool, run in the session's sandbox. Shaped like the SDK's async tools
    (`name`, `to_dict()`, `async call(input)`), so the SDK's session tool runner dispatches it."""

    def __init__(
        self,
        name: str,
        live: LiveSandbox,
        memory: WorkerMemory | None = None,
        python: "SkillsPython | None" = None,
    ) -> None:
        self.name = name
        self.live = live
        self.memory = memory
        self.python = python
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
        if self.python is not None:
            self.python.apply()  # here, on the tool's thread: a first build must not hold the loop
        if self.memory is not None:
            self.memory.pull()  # other writers' changes first, as on Galley's own hosts
        outcome = run_sandbox_tool(live=self.live, name=self.name, tool_input=tool_input, cancel=self.cancel)
        if self.memory is not None and self.name in WRITING_TOOLS:
            notes = self.memory.push()  # lost races and refusals are the model's to see
            if notes:
                outcome = ToolOutcome(content=[*outcome.content, *notes], is_error=outcome.is_error)
        return outcome

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)  # the final sync talks to the server

    def close(self) -> None:
        # The runner is done with the session: stop its shell (the workspace stays on disk), then
        # save what a background process may still have written to memory.
        with self.live.lock:
            sandbox_stop(self.live)
        if self.memory is not None and self.name == "bash":
            notes = self.memory.push()
            if notes:
                log.warning("the memory sync after the session's last call left %d notes unseen", len(notes))


class SkillsPython:
    """The built-in skills' Python libraries for a sandbox that mounts a built-in skill, as on
    Galley's own hosts: the same prefix (`skills.runtime`), built once per host under this host's
    GALLEY_PACKAGES_ROOT, mounted read-only and put on PYTHONPATH before the sandbox's first call.
    When it cannot be built (no package index reachable), the skill is mounted without it and the
    build's output is logged."""

    def __init__(self, live: LiveSandbox) -> None:
        self.live = live
        self.lock = threading.Lock()
        self.done = False

    def apply(self) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
            prefix = skill_python_ensure()
            if prefix is None:
                return
            spec = self.live.spec
            path = ":".join(p for p in (spec.env.get("PYTHONPATH"), PYTHON_MOUNT) if p)
            self.live.spec = replace(
                spec, mounts=(*spec.mounts, (str(prefix), PYTHON_MOUNT)), env={**spec.env, "PYTHONPATH": path}
            )


def _has_builtin_skill(mounts: tuple[tuple[str, str], ...]) -> bool:
    names = {f"{SKILLS_MOUNT}/{skill.bundle.name}" for i in builtin_ids() if (skill := builtin_get(i))}
    return any(target in names for _source, target in mounts)


def sandbox_tools(session_id: str, context: Any = None) -> list[SandboxTool]:
    """The tools of one work item. With the SDK's tool context: the session's skills (downloaded by
    the SDK's worker) and memory stores (synced through the API with the item's sessions token)
    are mounted too."""
    live = host_sandbox(session_id)
    memory = None
    python = None
    if context is not None:
        owner = live.spec.uid if os.geteuid() == 0 else None  # files the sandbox's uid must own
        memory = worker_memory(context, root=live.spec.root, uid=owner)
        mounts = skill_mounts(context, root=live.spec.root)
        live.spec = replace(
            live.spec,
            mounts=mounts,
            memory_mounts=memory.prepare() if memory is not None else (),
        )
        python = SkillsPython(live) if _has_builtin_skill(mounts) else None
    return [SandboxTool(name, live, memory, python) for name in SANDBOX_TOOLS]


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
    # The SDK downloads each item's skills into scratch/skills and removes them after the item; a
    # crashed run's leftovers must not be mounted for the next session.
    shutil.rmtree(scratch / "skills", ignore_errors=True)

    def tools(context: Any) -> list[SandboxTool]:
        return sandbox_tools(context.session.id, context)

    return client.beta.environments.work.worker(
        environment_id=environment_id,
        environment_key=environment_key,
        tools=tools,  # type: ignore[arg-type]  # duck-typed like the SDK's async tools
        # The SDK's own file tools are not used; this is where it downloads the item's skills.
        workdir=str(scratch),
        max_idle=max_idle,
        # Not the SDK's host-side sync: the stores are mounted in the sandbox (worker_memory.py).
        memory_sync_interval=None,
        worker_id=worker_id or default_worker_id(),
    )
