import io
import threading
from typing import Any

import pytest
from django.db import connection

from accounts.models import Workspace
from agents import services
from agents.models import Agent, AgentVersion
from api.errors import ApiError
from skills import services as skill_services
from skills.catalog import BUILTIN_VERSION

pytestmark = pytest.mark.django_db


def make(workspace: Workspace, **fields: Any) -> Agent:
    body = {"name": "Coding Assistant", "model": "claude-opus-4-7", **fields}
    return services.agent_create(workspace=workspace, body=body)


def wire(agent: Agent, version: int | None = None) -> dict[str, Any]:
    return services.agent_wire(services.agent_version_get(agent=agent, version=version))


def error_of(call: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def test_a_model_string_resolves_to_the_full_model_object(workspace):
    out = wire(make(workspace))
    assert out["model"] == {
        "id": "claude-opus-4-7",
        "effort": {"type": "high"},
        "speed": "standard",
        "inference_geo": None,
    }
    assert out["version"] == 1
    assert out["execution_identity"] == {"type": "service_account"}
    assert out["tools"] == [] and out["skills"] == [] and out["multiagent"] is None


def test_model_effort_accepts_a_bare_level_or_an_object(workspace):
    a = make(workspace, model={"id": "claude-m", "effort": "low", "speed": "fast", "inference_geo": "us"})
    assert wire(a)["model"] == {
        "id": "claude-m",
        "effort": {"type": "low"},
        "speed": "fast",
        "inference_geo": "us",
    }
    b = make(workspace, model={"id": "claude-m", "effort": {"type": "max"}})
    assert wire(b)["model"]["effort"] == {"type": "max"}
    err = error_of(lambda: make(workspace, model={"id": "claude-m", "effort": "extreme"}))
    assert err.status == 400 and "model.effort" in err.message


def test_agent_toolset_echoes_all_eight_tools_resolved(workspace):
    agent = make(
        workspace,
        tools=[
            {
                "type": "agent_toolset_20260401",
                "default_config": {"permission_policy": {"type": "always_ask"}},
                "configs": [
                    {"name": "bash", "permission_policy": {"type": "always_allow"}},
                    {"name": "web_search", "enabled": False},
                ],
            }
        ],
    )
    toolset = wire(agent)["tools"][0]
    assert toolset["default_config"] == {"enabled": True, "permission_policy": {"type": "always_ask"}}
    by_name = {c["name"]: c for c in toolset["configs"]}
    assert list(by_name) == ["bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search"]
    assert by_name["bash"]["permission_policy"] == {"type": "always_allow"}
    assert by_name["read"]["permission_policy"] == {"type": "always_ask"}
    assert by_name["web_search"]["enabled"] is False
    assert all(c["type"] == c["name"] for c in toolset["configs"])


def test_toolset_default_policy_is_always_allow(workspace):
    toolset = wire(make(workspace, tools=[{"type": "agent_toolset_20260401"}]))["tools"][0]
    assert {c["permission_policy"]["type"] for c in toolset["configs"]} == {"always_allow"}
    assert all(c["enabled"] for c in toolset["configs"])


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"name": "web_fetch", "allowed_domains": []}, "allowed_domains"),
        ({"name": "web_fetch", "allowed_domains": ["a.com"], "blocked_domains": ["b.com"]}, "configs[0]"),
        ({"name": "web_fetch", "blocked_domains": [f"d{i}.com" for i in range(65)]}, "blocked_domains"),
        (
            {
                "name": "web_fetch",
                "url_sources": {
                    "user_input": "none",
                    "client_tool_results": "none",
                    "server_tool_results": {"type": "none"},
                },
            },
            "url_sources",
        ),
        ({"name": "bash", "allowed_domains": ["a.com"]}, "configs[0].allowed_domains"),
        ({"name": "teleport"}, "configs[0].name"),
    ],
)
def test_bad_per_tool_config_is_rejected_naming_the_field(workspace, config, field):
    err = error_of(lambda: make(workspace, tools=[{"type": "agent_toolset_20260401", "configs": [config]}]))
    assert err.status == 400
    assert field in err.message


def test_web_fetch_extra_config_is_kept(workspace):
    tools = [
        {
            "type": "agent_toolset_20260401",
            "configs": [
                {
                    "name": "web_fetch",
                    "allowed_domains": ["Docs.Example.com"],
                    "max_content_tokens": 5000,
                    "url_sources": {
                        "user_input": "all",
                        "client_tool_results": {
                            "type": "only",
                            "tools": [{"type": "tool_reference", "name": "bash"}],
                        },
                    },
                },
                {
                    "name": "web_search",
                    "blocked_domains": ["spam.com"],
                    "user_location": {"type": "approximate", "city": "Paris"},
                },
            ],
        }
    ]
    configs = {c["name"]: c for c in wire(make(workspace, tools=tools))["tools"][0]["configs"]}
    assert configs["web_fetch"]["allowed_domains"] == ["docs.example.com"]
    assert configs["web_fetch"]["url_sources"]["client_tool_results"]["type"] == "only"
    assert configs["web_fetch"]["url_sources"]["server_tool_results"] is None
    assert configs["web_search"]["user_location"]["city"] == "Paris"


def test_mcp_toolset_defaults_to_always_ask_and_needs_its_server(workspace):
    agent = make(
        workspace,
        mcp_servers=[{"type": "url", "name": "docs", "url": "https://mcp.example.com/mcp"}],
        tools=[{"type": "mcp_toolset", "mcp_server_name": "docs", "configs": [{"name": "search"}]}],
    )
    toolset = wire(agent)["tools"][0]
    assert toolset["default_config"]["permission_policy"] == {"type": "always_ask"}
    assert toolset["configs"] == [
        {"name": "search", "enabled": True, "permission_policy": {"type": "always_ask"}}
    ]
    err = error_of(lambda: make(workspace, tools=[{"type": "mcp_toolset", "mcp_server_name": "nope"}]))
    assert err.status == 400 and "mcp_server_name" in err.message
    err = error_of(
        lambda: make(workspace, mcp_servers=[{"type": "url", "name": "docs", "url": "https://x.example/mcp"}])
    )
    assert err.status == 400 and "mcp_servers[0]" in err.message and "not referenced" in err.message


def test_mcp_servers_limits(workspace):
    servers = [{"type": "url", "name": "s", "url": "https://a.example"}] * 2
    err = error_of(
        lambda: make(workspace, mcp_servers=servers, tools=[{"type": "mcp_toolset", "mcp_server_name": "s"}])
    )
    assert "mcp_servers[1].name" in err.message
    many = [{"type": "url", "name": f"s{i}", "url": "https://a.example"} for i in range(21)]
    err = error_of(lambda: make(workspace, mcp_servers=many))
    assert "at most 20" in err.message


def test_duplicate_tool_names_are_a_tool_name_conflict(workspace):
    schema = {"type": "object", "properties": {}}
    err = error_of(
        lambda: make(
            workspace,
            tools=[
                {"type": "agent_toolset_20260401"},
                {"type": "custom", "name": "bash", "description": "x", "input_schema": schema},
            ],
        )
    )
    assert err.status == 400 and err.details["error_code"] == "tool_name_conflict"
    err = error_of(
        lambda: make(
            workspace, tools=[{"type": "custom", "name": "t", "description": "x", "input_schema": schema}] * 2
        )
    )
    assert err.details["error_code"] == "tool_name_conflict"


def test_custom_tool_rules(workspace):
    ok = {
        "type": "custom",
        "name": "get_weather",
        "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    assert wire(make(workspace, tools=[ok]))["tools"] == [ok]
    for bad, field in [
        ({**ok, "name": "has space"}, "tools[0].name"),
        ({**ok, "name": "x" * 129}, "tools[0].name"),
        ({**ok, "input_schema": {"type": "array"}}, "tools[0].input_schema.type"),
        ({k: v for k, v in ok.items() if k != "description"}, "tools[0].description"),
        (
            {**ok, "input_schema": {"type": "object", "properties": {"x": {"maximum": float("nan")}}}},
            "tools[0].input_schema",
        ),
        ({**ok, "input_schema": {"type": "object", "description": "x" * 70_000}}, "tools[0].input_schema"),
    ]:
        err = error_of(lambda bad=bad: make(workspace, tools=[bad]))
        assert err.status == 400 and field in err.message


def test_too_many_tools_is_rejected(workspace):
    schema = {"type": "object"}
    tools = [
        {"type": "custom", "name": f"t{i}", "description": "x", "input_schema": schema} for i in range(257)
    ]
    err = error_of(lambda: make(workspace, tools=tools))
    assert "at most 256" in err.message


@pytest.fixture
def other_workspace(db):  # type: ignore[no-untyped-def]
    return Workspace.objects.create(id="wrkspc_other", name="Other")


def custom_skill(workspace: Workspace, name: str = "notes") -> Any:
    md = f"---\nname: {name}\ndescription: Notes about {name}.\n---\n".encode()
    return skill_services.skill_create(
        workspace=workspace, uploads=[(f"{name}/SKILL.md", len(md), io.BytesIO(md))], display_name=None
    )


def test_skill_references_resolve_to_concrete_versions(workspace):
    notes = custom_skill(workspace)
    agent = make(
        workspace,
        skills=[{"type": "anthropic", "skill_id": "xlsx"}, {"type": "custom", "skill_id": notes.id}],
    )
    assert wire(agent)["skills"] == [
        {"type": "anthropic", "skill_id": "xlsx", "version": BUILTIN_VERSION},
        {"type": "custom", "skill_id": notes.id, "version": notes.latest_version_id},
    ]
    pinned = make(
        workspace, skills=[{"type": "custom", "skill_id": notes.id, "version": notes.latest_version_id}]
    )
    assert wire(pinned)["skills"][0]["version"] == notes.latest_version_id


def test_a_skill_reference_to_nothing_is_refused_naming_it(workspace, other_workspace):
    assert (
        "skills[0].skill_id"
        in error_of(lambda: make(workspace, skills=[{"type": "anthropic", "skill_id": "zip"}])).message
    )
    missing = error_of(
        lambda: make(
            workspace,
            skills=[
                {"type": "anthropic", "skill_id": "pdf"},
                {"type": "custom", "skill_id": "skill_01nothere"},
            ],
        )
    )
    assert missing.status == 400 and "skills[1].skill_id" in missing.message
    theirs = custom_skill(other_workspace, "theirs")
    assert (
        "skills[0].skill_id"
        in error_of(lambda: make(workspace, skills=[{"type": "custom", "skill_id": theirs.id}])).message
    )
    mine = custom_skill(workspace, "mine")
    bad_version = error_of(
        lambda: make(workspace, skills=[{"type": "custom", "skill_id": mine.id, "version": "9"}])
    )
    assert "skills[0].version" in bad_version.message
    assert (
        "skills[0].version"
        in error_of(
            lambda: make(workspace, skills=[{"type": "anthropic", "skill_id": "pdf", "version": "1999"}])
        ).message
    )


def test_a_session_has_at_most_20_skills_across_the_roster(workspace):
    many = [custom_skill(workspace, f"s{i}") for i in range(16)]
    refs = [{"type": "custom", "skill_id": s.id} for s in many]
    builtins = [{"type": "anthropic", "skill_id": i} for i in ("xlsx", "docx", "pptx", "pdf")]
    member = make(workspace, name="member", skills=refs[:10])
    ok = make(
        workspace,
        name="lead",
        skills=refs[10:16] + builtins,
        multiagent={"type": "coordinator", "agents": [member.id, {"type": "self"}]},
    )
    assert len(wire(ok)["skills"]) == 10
    err = error_of(
        lambda: make(
            workspace,
            name="lead2",
            skills=refs[10:16] + builtins + [refs[0]],
            multiagent={"type": "coordinator", "agents": [member.id]},
        )
    )
    assert err.status == 400 and "at most 20 skills" in err.message and "21" in err.message
    # Updating the member later does not change the pinned roster, but a new roster entry counts.
    err = error_of(
        lambda: services.agent_update(agent=ok, body={"skills": refs[10:16] + builtins + [refs[0]]})
    )
    assert "21" in err.message


def test_coordinator_roster_resolves_and_enforces_depth_one(workspace):
    worker = make(workspace, name="worker")
    lead = make(
        workspace, name="lead", multiagent={"type": "coordinator", "agents": [worker.id, {"type": "self"}]}
    )
    roster = wire(lead)["multiagent"]
    assert roster == {
        "type": "coordinator",
        "agents": [
            {"type": "agent", "id": worker.id, "version": 1},
            {"type": "agent", "id": lead.id, "version": 1},
        ],
    }
    err = error_of(lambda: make(workspace, multiagent={"type": "coordinator", "agents": [lead.id]}))
    assert err.status == 400 and "one level deep" in err.message
    err = error_of(
        lambda: make(workspace, multiagent={"type": "coordinator", "agents": [worker.id, worker.id]})
    )
    assert "more than once" in err.message
    err = error_of(
        lambda: make(
            workspace, multiagent={"type": "coordinator", "agents": [{"type": "self"}, {"type": "self"}]}
        )
    )
    assert "more than once" in err.message
    err = error_of(lambda: make(workspace, multiagent={"type": "coordinator", "agents": []}))
    assert "1 to 20" in err.message
    err = error_of(lambda: make(workspace, multiagent={"type": "coordinator", "agents": ["agent_missing"]}))
    assert "not found" in err.message
    services.agent_archive(agent=worker)
    err = error_of(lambda: make(workspace, multiagent={"type": "coordinator", "agents": [worker.id]}))
    assert "archived" in err.message


def test_roster_of_more_than_twenty_is_rejected(workspace):
    members = [make(workspace, name=f"m{i}").id for i in range(21)]
    err = error_of(lambda: make(workspace, multiagent={"type": "coordinator", "agents": members}))
    assert err.status == 400 and "multiagent.agents" in err.message


def test_update_bumps_version_and_keeps_omitted_fields(workspace):
    agent = make(workspace, system="be brief", metadata={"team": "a", "tier": "1"})
    agent = services.agent_update(
        agent=agent, body={"version": 1, "description": "helps", "metadata": {"tier": None, "x": "y"}}
    )
    out = wire(agent)
    assert out["version"] == 2
    assert out["system"] == "be brief" and out["description"] == "helps"
    assert out["metadata"] == {"team": "a", "x": "y"}
    assert wire(agent, 1)["description"] is None
    agent = services.agent_update(agent=agent, body={"system": ""})
    assert wire(agent)["system"] is None and wire(agent)["version"] == 3


def test_model_update_keeps_effort_but_clears_geo(workspace):
    agent = make(workspace, model={"id": "claude-m", "effort": "low", "inference_geo": "eu"})
    agent = services.agent_update(agent=agent, body={"model": {"id": "claude-m2"}})
    assert wire(agent)["model"] == {
        "id": "claude-m2",
        "effort": {"type": "low"},
        "speed": "standard",
        "inference_geo": None,
    }


def test_noop_update_does_not_bump_the_version(workspace):
    agent = make(workspace, tools=[{"type": "agent_toolset_20260401"}])
    same = services.agent_update(
        agent=agent,
        body={
            "name": "Coding Assistant",
            "model": "claude-opus-4-7",
            "tools": [{"type": "agent_toolset_20260401"}],
        },
    )
    assert same.current_version == 1
    assert AgentVersion.objects.filter(agent=agent).count() == 1


def test_noop_update_of_a_self_referencing_coordinator_keeps_the_version(workspace):
    agent = make(workspace, multiagent={"type": "coordinator", "agents": [{"type": "self"}]})
    same = services.agent_update(
        agent=agent, body={"multiagent": {"type": "coordinator", "agents": [{"type": "self"}]}}
    )
    assert same.current_version == 1


def test_stale_version_is_a_409_without_retry(workspace):
    agent = make(workspace)
    services.agent_update(agent=agent, body={"system": "v2"})
    err = error_of(lambda: services.agent_update(agent=agent, body={"version": 1, "system": "v3"}))
    assert err.status == 409 and err.headers["x-should-retry"] == "false"
    assert "version" in err.message


def test_archived_agent_is_read_only(workspace):
    agent = services.agent_archive(agent=make(workspace))
    assert wire(agent)["archived_at"] is not None
    err = error_of(lambda: services.agent_update(agent=agent, body={"system": "x"}))
    assert err.status == 400 and "archived" in err.message


def test_missing_version_is_a_404(workspace):
    err = error_of(lambda: services.agent_version_get(agent=make(workspace), version=7))
    assert err.status == 404


def test_other_workspace_and_wrong_prefix_are_404(workspace):
    agent = make(workspace)
    other = Workspace.objects.create(name="other")
    for ws, agent_id in [(other, agent.id), (workspace, "env_123"), (workspace, "agent_nope")]:
        err = error_of(lambda ws=ws, agent_id=agent_id: services.agent_get(workspace=ws, agent_id=agent_id))
        assert err.status == 404 and agent_id in err.message


def test_list_hides_archived_and_filters_by_created_at(workspace):
    first = make(workspace, name="first")
    second = make(workspace, name="second")
    services.agent_archive(agent=first)
    assert [a.id for a in services.agent_list(workspace=workspace).items] == [second.id]
    assert {a.id for a in services.agent_list(workspace=workspace, include_archived=True).items} == {
        first.id,
        second.id,
    }
    later = services.agent_list(
        workspace=workspace, include_archived=True, created_at_gte=second.created_at
    ).items
    assert [a.id for a in later] == [second.id]
    earlier = services.agent_list(
        workspace=workspace, include_archived=True, created_at_lte=first.created_at
    ).items
    assert [a.id for a in earlier] == [first.id]
    err = error_of(lambda: services.agent_list(workspace=workspace, limit=101))
    assert err.status == 400 and "limit" in err.message


@pytest.mark.django_db(transaction=True)
def test_concurrent_updates_keep_versions_contiguous(workspace):
    agent = make(workspace)
    rounds = 6
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        try:
            for i in range(rounds):
                barrier.wait(timeout=30)
                services.agent_update(agent=agent, body={"system": f"{tag}-{i}"})
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    versions = list(
        AgentVersion.objects.filter(agent=agent).order_by("version").values_list("version", flat=True)
    )
    assert versions == list(range(1, 2 * rounds + 2))
    agent.refresh_from_db()
    assert agent.current_version == 2 * rounds + 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_updates_with_the_same_precondition_let_exactly_one_win(workspace):
    agent = make(workspace)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def writer(tag: str) -> None:
        try:
            barrier.wait(timeout=30)
            services.agent_update(agent=agent, body={"version": 1, "system": tag})
            outcomes.append("ok")
        except ApiError as exc:
            outcomes.append(exc.status)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes, key=str) == [409, "ok"]
    assert list(
        AgentVersion.objects.filter(agent=agent).values_list("version", flat=True).order_by("version")
    ) == [1, 2]


@pytest.mark.django_db(transaction=True)
def test_an_update_waits_for_the_row_lock_held_by_another(workspace, monkeypatch):
    """Thread A holds the agent row lock (mid-update) while B starts its update: B must wait and
    then write version 3, never a second version 2."""
    agent = make(workspace)
    a_inside = threading.Event()
    original = services._resolve_fields
    finished: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def slow_resolve(**kwargs: Any) -> dict[str, Any]:
        if threading.current_thread().name == "a":
            a_inside.set()
            threading.Event().wait(0.5)  # hold the lock while B arrives
        return original(**kwargs)

    monkeypatch.setattr(services, "_resolve_fields", slow_resolve)

    def writer(system: str) -> None:
        try:
            if threading.current_thread().name == "b":
                assert a_inside.wait(timeout=30)
            updated = services.agent_update(agent=agent, body={"system": system})
            finished.append((threading.current_thread().name, updated.current_version))
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(name,), name=name) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sorted(finished) == [("a", 2), ("b", 3)]
    agent.refresh_from_db()
    assert wire(agent)["system"] == "b"


def test_the_unique_version_constraint_is_the_backstop(workspace):
    from django.db import IntegrityError, transaction

    agent = make(workspace)
    with pytest.raises(IntegrityError), transaction.atomic():
        AgentVersion.objects.create(agent=agent, version=1, definition={})


def test_a_self_entry_follows_the_agents_version(workspace):
    worker = make(workspace, name="worker")
    lead = make(
        workspace, name="lead", multiagent={"type": "coordinator", "agents": [{"type": "self"}, worker.id]}
    )
    lead = services.agent_update(agent=lead, body={"system": "lead the team"})
    roster = wire(lead)["multiagent"]["agents"]
    assert roster == [
        {"type": "agent", "id": lead.id, "version": 2},
        {"type": "agent", "id": worker.id, "version": 1},
    ]
    assert wire(lead, 1)["multiagent"]["agents"][0]["version"] == 1


def test_an_advisor_is_echoed_last_and_only_once(workspace):
    worker = make(workspace, name="worker")
    roster = {"type": "coordinator", "agents": [{"type": "advisor", "model": "claude-opus-4-7"}, worker.id]}
    lead = make(workspace, name="lead", multiagent=roster)
    assert wire(lead)["multiagent"]["agents"][-1] == {"type": "advisor", "model": "claude-opus-4-7"}
    twice = {
        "type": "coordinator",
        "agents": [{"type": "advisor", "model": "claude-a"}, {"type": "advisor", "model": "claude-b"}],
    }
    assert "one advisor" in error_of(lambda: make(workspace, multiagent=twice)).message


def test_multiagent_20261001_is_refused_until_sessions_run_it(workspace):
    err = error_of(lambda: make(workspace, multiagent={"type": "multiagent_20261001"}))
    assert err.status == 400 and "not supported yet" in err.message
