"""The pull-request story through the official SDK against a live server: a session created with a
`github_repository` resource finds the repository cloned at its branch, changes it and pushes it back;
the push reaches the git server with the token, which no event, tool result or sandbox file holds."""

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.git_server import git, git_server, make_repository
from tests.live import live_galley
from tests.model_server import scripted_model, text, tool_call
from tests.scan import file_holds

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

TOKEN = "ghp_sdk_live_token_5f1e0c9a7b3d"


def _wait_idle(client: Any, session_id: str, results: int, timeout: float = 90) -> list[Any]:
    deadline = time.monotonic() + timeout
    events: list[Any] = []
    while time.monotonic() < deadline:
        events = list(client.beta.sessions.events.list(session_id, limit=100))
        done = [e for e in events if e.type == "agent.tool_result"]
        if len(done) >= results and events[-1].type == "session.status_idle":
            return events
        time.sleep(0.2)
    raise AssertionError(f"the session did not finish: {[e.type for e in events]}")


def test_a_session_clones_changes_and_pushes_its_repository() -> None:
    root = Path(tempfile.mkdtemp(prefix="galley-repos-"))
    os.chmod(root, 0o711)
    try:
        with git_server(root / "git", TOKEN) as server, scripted_model() as model:
            heads = make_repository(
                server, "octo/app", {"main": {"app.py": "print(1)\n"}, "fix": {"x": "1\n"}}
            )
            env = {
                "ANTHROPIC_API_KEY": "sk-test",
                "ANTHROPIC_BASE_URL": model.base_url,
                "GALLEY_SANDBOX_ROOT": str(root / "sandboxes"),
                "GALLEY_GIT_HOSTS": server.netloc,
            }
            with live_galley(extra_env=env) as live:
                client = live.client()
                environment = client.beta.environments.create(
                    name="repo-env", config={"type": "cloud", "networking": {"type": "limited"}}
                )
                agent = client.beta.agents.create(
                    name="Fixer", model="claude-sonnet-4-6", tools=[{"type": "agent_toolset_20260401"}]
                )
                session = client.beta.sessions.create(
                    agent=agent.id,
                    environment_id=environment.id,
                    resources=[
                        {
                            "type": "github_repository",
                            "url": server.url("octo/app"),
                            "authorization_token": TOKEN,
                            "checkout": {"type": "branch", "name": "fix"},
                        }
                    ],
                )
                [resource] = client.beta.sessions.resources.list(session.id).data
                assert resource.type == "github_repository" and resource.mount_path == "/workspace/app"
                model.push(
                    tool_call(
                        "bash",
                        {
                            "command": "cd /workspace/app && git rev-parse HEAD && echo fixed > x && "
                            "git -c user.name=Agent -c user.email=agent@example.com commit -qam fix && "
                            "git push -q origin HEAD:fix && git log -1 --format=%s"
                        },
                    ),
                    text("Pushed the fix."),
                )
                client.beta.sessions.events.send(
                    session.id,
                    events=[{"type": "user.message", "content": [{"type": "text", "text": "Fix and push."}]}],
                )
                events = _wait_idle(client, session.id, results=1)
                [result] = [e for e in events if e.type == "agent.tool_result"]
                output = "\n".join(b.text for b in result.content if b.type == "text")
                assert not result.is_error, output
                assert output.split()[0] == heads["fix"] and output.split()[-1] == "fix"
                bare = server.root / "octo/app.git"
                assert git("-C", str(bare), "log", "-1", "--format=%s", "fix") == "fix"
                assert all(TOKEN not in e.model_dump_json() for e in events)
                hits = [
                    str(p)
                    for p in (root / "sandboxes").rglob("*")
                    if p.is_file() and not p.is_symlink() and file_holds(p, TOKEN.encode())
                ]
                assert hits == []
                assert TOKEN not in (live.data_dir / "serve.log").read_text(errors="replace")
    finally:
        shutil.rmtree(root, ignore_errors=True)
