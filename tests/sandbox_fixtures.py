"""Shared fixtures for the sandbox tests: sessions in the test DB with real bubblewrap sandboxes."""

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from api.ids import new_id

TOOLSET = {"type": "agent_toolset_20260401"}


@contextmanager
def live_sandbox_server(prefix: str) -> Iterator[tuple[Any, Any, Path]]:
    """A live Galley (web + worker) on a scripted model, its sandboxes under a fresh traversable root:
    (live server, scripted model, root), the root's mounted volumes released and the root removed after."""
    from tests.live import live_galley
    from tests.model_server import scripted_model

    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(root, 0o711)  # sandboxes run as their own uid and must reach their workspace
    try:
        with scripted_model() as model:
            env = {
                "ANTHROPIC_API_KEY": "sk-test",
                "ANTHROPIC_BASE_URL": model.base_url,
                "GALLEY_SANDBOX_ROOT": str(root / "sandboxes"),
            }
            with live_galley(extra_env=env) as live:
                yield live, model, root
    finally:
        from sandboxes.quota import volumes_release_under

        volumes_release_under(root)  # sandbox volumes the live worker mounted
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sandbox_root(settings: Any) -> Iterator[Path]:
    # Under /tmp with traversable parents: sandboxes run as an unprivileged uid that must reach its workspace.
    base = Path(tempfile.mkdtemp(prefix="galley-sbx-"))
    os.chmod(base, 0o711)
    settings.GALLEY_SANDBOX_ROOT = base / "sandboxes"
    settings.GALLEY_PACKAGES_ROOT = base / "packages"
    settings.GALLEY_SANDBOX_BACKEND = "bwrap"
    yield base
    from sandboxes import services
    from sandboxes.quota import volumes_release_under

    for key in list(services._registry):
        services.sandbox_destroy(session_id=key.split(".")[0])
    volumes_release_under(base)  # volumes a live worker mounted for sessions it never destroyed
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_sandbox_session(db: Any, sandbox_root: Path) -> Callable[..., Any]:
    from accounts.services import workspace_get_default
    from agents.models import Agent, Environment
    from sessions.models import Session

    def make(
        *,
        networking: dict | None = None,
        tools: list | None = None,
        packages: dict | None = None,
        build_status: str = "ready",
    ) -> Session:
        ws = workspace_get_default()
        agent = Agent.objects.create(id=new_id("agent"), workspace=ws, name="a")
        config = {
            "type": "cloud",
            "networking": networking or {"type": "unrestricted"},
            "packages": {
                "type": "packages",
                "apt": [],
                "cargo": [],
                "gem": [],
                "go": [],
                "npm": [],
                "pip": [],
                **(packages or {}),
            },
        }
        env = Environment.objects.create(
            id=new_id("env"), workspace=ws, name=new_id("env"), config=config, build_status=build_status
        )
        return Session.objects.create(
            id=new_id("sesn"),
            workspace=ws,
            agent=agent,
            agent_version=1,
            environment=env,
            agent_snapshot={"tools": tools if tools is not None else [TOOLSET]},
        )

    return make


def run(session: Any, name: str, **tool_input: Any) -> Any:
    from sandboxes.toolset import run_tool

    return run_tool(session=session, name=name, tool_input=tool_input, tool_use_id="toolu_1")


def text(outcome: Any) -> str:
    return "\n".join(b.get("text", "") for b in outcome.content if b.get("type") == "text")


def volume_mount(root: Path) -> None:
    """Mount a stopped sandbox's volume image again (as its next tool call would), for a test to read it."""
    from django.conf import settings

    from sandboxes.quota import volume_provision

    volume_provision(root=root, limit=settings.GALLEY_SANDBOX_WORKSPACE_BYTES)
