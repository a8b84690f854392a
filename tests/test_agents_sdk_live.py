"""The agents and environments API through the official SDK with strict response validation."""

import json
import os
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

GOLDEN = Path(__file__).parent / "golden"
VOLATILE = {"build_status", "build_log", "id", "created_at", "updated_at", "archived_at"}


def other_workspace_client(live) -> anthropic.Anthropic:  # type: ignore[no-untyped-def]
    code = (
        "from accounts.models import Workspace; from accounts.services import api_key_create; "
        "ws = Workspace.objects.create(name='Other'); print(api_key_create(name='other', workspace=ws)[1])"
    )
    raw = live.manage("shell", "-c", code).stdout.strip().splitlines()[-1]
    return anthropic.Anthropic(
        base_url=live.base_url, api_key=raw, max_retries=0, _strict_response_validation=True
    )


def without_volatile(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in VOLATILE}


def assert_golden(name: str, text: str) -> None:
    """Compare a response with tests/golden/<name>.json; GALLEY_WRITE_GOLDEN=1 rewrites the file."""
    path = GOLDEN / f"{name}.json"
    actual = without_volatile(json.loads(text))
    if os.environ.get("GALLEY_WRITE_GOLDEN") == "1":
        path.write_text(json.dumps(actual, indent=2) + "\n")
    assert actual == json.loads(path.read_text())


def test_quickstart_agent_lifecycle(live):
    client = live.client()
    agent = client.beta.agents.create(
        name="Coding Assistant",
        model="claude-opus-4-7",
        system="You are a helpful coding assistant.",
        tools=[{"type": "agent_toolset_20260401"}],
    )
    assert agent.id.startswith("agent_") and agent.version == 1
    assert agent.model.id == "claude-opus-4-7" and agent.model.speed == "standard"
    assert [c.name for c in agent.tools[0].configs] == [
        "bash",
        "edit",
        "read",
        "write",
        "glob",
        "grep",
        "web_fetch",
        "web_search",
    ]

    raw = client.beta.agents.with_raw_response.retrieve(agent.id)
    assert_golden("agent_quickstart", raw.text())

    updated = client.beta.agents.update(
        agent.id, version=agent.version, system="You are terse.", metadata={"team": "core"}
    )
    assert (
        updated.version == 2 and updated.system == "You are terse." and updated.metadata == {"team": "core"}
    )
    same = client.beta.agents.update(agent.id, version=2, system="You are terse.")
    assert same.version == 2

    assert client.beta.agents.retrieve(agent.id, version=1).system == "You are a helpful coding assistant."
    with pytest.raises(anthropic.NotFoundError):
        client.beta.agents.retrieve(agent.id, version=9)

    for i in range(3):
        client.beta.agents.update(agent.id, system=f"take {i}")
    versions = [v.version for v in client.beta.agents.versions.list(agent.id, limit=2)]
    assert versions == [5, 4, 3, 2, 1]

    listed = [a.id for a in client.beta.agents.list()]
    assert agent.id in listed

    archived = client.beta.agents.archive(agent.id)
    assert archived.archived_at is not None
    assert agent.id not in [a.id for a in client.beta.agents.list()]
    assert agent.id in [a.id for a in client.beta.agents.list(include_archived=True)]
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.agents.update(agent.id, system="nope")
    assert "archived" in info.value.message


def test_version_conflict_is_raised_once_without_retries(live):
    attempts: list[int] = []
    client = live.client(
        max_retries=2, http_client=httpx2.Client(event_hooks={"request": [lambda r: attempts.append(1)]})
    )
    agent = client.beta.agents.create(name="racer", model="claude-sonnet-4-6")
    client.beta.agents.update(agent.id, system="v2")
    attempts.clear()
    with pytest.raises(anthropic.ConflictError) as info:
        client.beta.agents.update(agent.id, version=1, system="v3")
    assert len(attempts) == 1
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "version" in info.value.message


def test_list_agents_filters_by_created_at(live):
    client = live.client()
    agent = client.beta.agents.create(name="dated", model="claude-sonnet-4-6")
    assert agent.id in [a.id for a in client.beta.agents.list(created_at_gte=agent.created_at)]
    assert agent.id not in [a.id for a in client.beta.agents.list(created_at_lte="2000-01-01T00:00:00Z")]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "claude-m"}, "name"),
        ({"name": "x"}, "model"),
        ({"name": "x", "model": "claude-m", "tools": [{"type": "wat"}]}, "tools[0].type"),
        ({"name": "x", "model": "claude-m", "colour": "red"}, "colour"),
        ({"name": "x", "model": "claude-m", "metadata": {"k": 1}}, "metadata.k"),
    ],
)
def test_bad_agent_bodies_are_400s_naming_the_field(live, body, field):
    client = live.client()
    with pytest.raises(anthropic.BadRequestError) as info:
        client.post("/v1/agents", body=body, cast_to=object)
    assert field in info.value.message
    assert info.value.body["error"]["type"] == "invalid_request_error"


def test_tool_name_conflict_carries_its_error_code(live):
    client = live.client()
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.agents.create(
            name="x",
            model="claude-m",
            tools=[
                {"type": "agent_toolset_20260401"},
                {"type": "custom", "name": "read", "description": "d", "input_schema": {"type": "object"}},
            ],
        )
    assert info.value.body["error"]["details"]["error_code"] == "tool_name_conflict"


def test_other_workspaces_objects_are_404(live):
    client = live.client()
    other = other_workspace_client(live)
    agent = client.beta.agents.create(name="mine", model="claude-m")
    env = client.beta.environments.create(name="mine-env")
    with pytest.raises(anthropic.NotFoundError):
        other.beta.agents.retrieve(agent.id)
    with pytest.raises(anthropic.NotFoundError):
        other.beta.agents.update(agent.id, system="x")
    with pytest.raises(anthropic.NotFoundError):
        other.beta.environments.retrieve(env.id)
    with pytest.raises(anthropic.NotFoundError):
        other.beta.environments.delete(env.id)
    assert agent.id not in [a.id for a in other.beta.agents.list()]
    with pytest.raises(anthropic.NotFoundError) as info:
        client.beta.agents.retrieve("vlt_123")
    assert "vlt_123" in info.value.message


def test_missing_key_is_a_401(live):
    client = anthropic.Anthropic(base_url=live.base_url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        client.beta.environments.list(extra_headers={"Authorization": anthropic.Omit()})


def test_environment_lifecycle(live):
    client = live.client()
    env = client.beta.environments.create(
        name="data-science",
        config={
            "type": "cloud",
            "networking": {
                "type": "limited",
                "allowed_hosts": ["api.example.com"],
                "allow_package_managers": True,
            },
            "packages": {"pip": ["pandas"]},
        },
    )
    raw = client.beta.environments.with_raw_response.retrieve(env.id)
    assert_golden("environment_limited", raw.text())
    assert env.config.packages.npm == [] and env.config.networking.allow_mcp_servers is False

    with pytest.raises(anthropic.ConflictError):
        client.beta.environments.create(name="data-science")
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.environments.update(env.id, config={"type": "self_hosted"})
    assert info.value.body["error"]["details"]["error_code"] == "invalid_config_type_change"

    updated = client.beta.environments.update(
        env.id,
        description="pandas box",
        metadata={"owner": "me"},
        config={"type": "cloud", "packages": {"pip": ["pandas", "numpy"]}},
    )
    assert updated.description == "pandas box"
    assert updated.config.networking.allowed_hosts == ["api.example.com"]
    assert updated.config.packages.pip == ["pandas", "numpy"]

    assert env.id in [e.id for e in client.beta.environments.list()]
    archived = client.beta.environments.archive(env.id)
    assert archived.archived_at is not None
    assert env.id not in [e.id for e in client.beta.environments.list()]
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.environments.update(env.id, description="x")
    assert info.value.body["error"]["details"]["error_code"] == "environment_archived"

    deleted = client.beta.environments.delete(env.id)
    assert deleted.id == env.id and deleted.type == "environment_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.environments.retrieve(env.id)


def test_limited_packages_without_package_managers_is_a_400(live):
    client = live.client()
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.environments.create(
            name="locked",
            config={"type": "cloud", "networking": {"type": "limited"}, "packages": {"pip": ["pandas"]}},
        )
    assert "allow_package_managers" in info.value.message


def test_agent_list_pages_with_cursors(live):
    client = live.client()
    ids = {client.beta.agents.create(name=f"paged-{i}", model="claude-m").id for i in range(3)}
    first = client.beta.agents.list(limit=2)
    assert len(first.data) == 2 and first.next_page
    seen = [a.id for a in client.beta.agents.list(limit=2)]  # auto-pagination follows next_page
    assert ids <= set(seen) and len(seen) == len(set(seen))
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.agents.list(limit=101)
    assert "limit" in info.value.message


def test_a_fully_loaded_agent_parses_strictly(live):
    """Every resolved shape (toolset extras, MCP, custom tools, skills, roster, identity) against the
    SDK's strict models."""
    client = live.client()
    worker = client.beta.agents.create(name="worker", model="claude-sonnet-4-6")
    md = b"---\nname: lead-notes\ndescription: Notes.\n---\n"
    notes = client.beta.skills.create(files=[("lead-notes/SKILL.md", md)])
    agent = client.beta.agents.create(
        name="lead",
        model={"id": "claude-opus-4-7", "effort": "xhigh", "speed": "fast", "inference_geo": "us"},
        description="Leads",
        tools=[
            {
                "type": "agent_toolset_20260401",
                "default_config": {"enabled": False},
                "configs": [
                    {"name": "bash", "enabled": True, "permission_policy": {"type": "auto"}},
                    {
                        "name": "web_fetch",
                        "enabled": True,
                        "blocked_domains": ["evil.example"],
                        "max_content_tokens": 4000,
                        "url_sources": {
                            "user_input": "all",
                            "client_tool_results": {
                                "type": "except",
                                "tools": [{"type": "tool_reference", "name": "x"}],
                            },
                            "server_tool_results": "none",
                        },
                    },
                    {
                        "name": "web_search",
                        "allowed_domains": ["docs.example"],
                        "user_location": {"type": "approximate", "country": "FR"},
                    },
                ],
            },
            {
                "type": "mcp_toolset",
                "mcp_server_name": "linear",
                "default_config": {"permission_policy": {"type": "always_allow"}},
            },
            {
                "type": "custom",
                "name": "lookup",
                "description": "Look up",
                "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        ],
        mcp_servers=[{"type": "url", "name": "linear", "url": "https://mcp.linear.example/mcp"}],
        skills=[
            {"type": "anthropic", "skill_id": "xlsx"},
            {"type": "custom", "skill_id": notes.id, "version": "latest"},
        ],
        multiagent={
            "type": "coordinator",
            "agents": [{"type": "self"}, worker.id, {"type": "advisor", "model": "claude-opus-4-7"}],
        },
        execution_identity={"type": "aws_role", "role_arn": "arn:aws:iam::123456789012:role/agent"},
        metadata={"team": "core"},
    )
    fetched = client.beta.agents.retrieve(agent.id)
    assert fetched.model.effort.type == "xhigh" and fetched.model.inference_geo == "us"
    toolset = fetched.tools[0]
    configs = {c.name: c for c in toolset.configs}
    assert configs["bash"].enabled and not configs["read"].enabled
    assert configs["web_fetch"].url_sources.server_tool_results.type == "none"
    assert configs["web_search"].user_location.country == "FR"
    assert fetched.tools[1].default_config.permission_policy.type == "always_allow"
    assert fetched.tools[2].input_schema.properties == {"q": {"type": "string"}}
    assert [s.version for s in fetched.skills] == ["20261201", notes.latest_version_id]
    assert [a.type for a in fetched.multiagent.agents] == ["agent", "agent", "advisor"]
    assert fetched.multiagent.agents[0].id == agent.id and fetched.multiagent.agents[1].version == 1
    assert fetched.execution_identity.type == "aws_role"
