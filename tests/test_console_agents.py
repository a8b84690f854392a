"""Agents, environments and vaults through the console's forms: the same services as the API,
field-level messages for bad input, versions and diffs, and role checks on every action."""

import pytest
from django.test import Client

from accounts.models import Role
from agents.models import Agent, Environment
from tests.console_factories import client_for, fast_passwords, make_environment  # noqa: F401

pytestmark = pytest.mark.django_db


def agent_form(**overrides: str) -> dict[str, str]:
    data = {
        "name": "Support bot",
        "description": "Answers tickets",
        "model": "claude-sonnet-4-6",
        "model_other": "",
        "effort": "high",
        "system": "You answer support tickets politely.",
        "toolset": "on",
        "tool-bash-enabled": "on",
        "tool-bash-policy": "always_ask",
        "tool-read-enabled": "on",
        "tool-read-policy": "always_allow",
        "mcp-0-name": "",
        "mcp-0-url": "",
        "mcp-0-policy": "always_ask",
        "custom-0-name": "",
        "custom-0-description": "",
        "custom-0-schema": "",
        "roster-0-agent": "",
        "roster-0-version": "",
    }
    data.update(overrides)
    return data


def test_editor_builds_an_agent_with_the_form(workspace):
    client = client_for(workspace, Role.EDITOR)
    assert client.get("/agents/new").status_code == 200
    response = client.post(
        "/agents/new",
        agent_form(
            **{
                "custom-0-name": "lookup_order",
                "custom-0-description": "Find an order by number",
                "custom-0-schema": '{"type": "object", "properties": {"number": {"type": "string"}}}',
                "skill-pdf": "on",
            }
        ),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    agent = Agent.objects.get(name="Support bot")
    assert response["Location"] == f"/agents/{agent.pk}"
    d = agent.latest().definition
    assert d["model"]["id"] == "claude-sonnet-4-6" and d["system"].startswith("You answer")
    toolset = next(t for t in d["tools"] if t["type"] == "agent_toolset_20260401")
    configs = {c["name"]: c for c in toolset["configs"]}
    assert configs["bash"]["enabled"] and configs["bash"]["permission_policy"] == {"type": "always_ask"}
    assert configs["write"]["enabled"] is False
    custom = next(t for t in d["tools"] if t["type"] == "custom")
    assert (
        custom["name"] == "lookup_order"
        and custom["input_schema"]["properties"]["number"]["type"] == "string"
    )
    assert d["skills"][0]["skill_id"] == "pdf"
    page = client.get(f"/agents/{agent.pk}").content.decode()
    assert "Support bot" in page and "lookup_order" in page and "Start a session" in page


def test_agent_form_shows_errors_at_the_field(workspace):
    client = client_for(workspace, Role.EDITOR)
    response = client.post("/agents/new", agent_form(name=""))
    assert response.status_code == 400
    assert b"Give the agent a name." in response.content
    bad_json = client.post(
        "/agents/new",
        agent_form(**{"custom-0-name": "x", "custom-0-description": "d", "custom-0-schema": "{not json"}),
    )
    assert bad_json.status_code == 400 and b"not valid JSON" in bad_json.content
    bad_url = client.post("/agents/new", agent_form(**{"mcp-0-name": "docs", "mcp-0-url": "not a url"}))
    assert bad_url.status_code == 400 and b"mcp_servers[0].url" in bad_url.content
    assert b'value="docs"' in bad_url.content  # what the user typed is kept
    assert Agent.objects.count() == 0


def test_saving_makes_versions_and_the_diff_shows_changes(workspace):
    client = client_for(workspace, Role.EDITOR)
    client.post("/agents/new", agent_form())
    agent = Agent.objects.get()
    assert client.get(f"/agents/{agent.pk}/edit").status_code == 200
    client.post(f"/agents/{agent.pk}/edit", agent_form(system="Be brief.", version="1"))
    agent.refresh_from_db()
    assert agent.current_version == 2
    same = client.post(f"/agents/{agent.pk}/edit", agent_form(system="Be brief.", version="2"), follow=True)
    assert b"Nothing changed" in same.content
    agent.refresh_from_db()
    assert agent.current_version == 2
    stale = client.post(f"/agents/{agent.pk}/edit", agent_form(system="Old tab", version="1"))
    assert stale.status_code == 400 and b"version" in stale.content
    assert f"/agents/{agent.pk}/diff?a=1&amp;b=2" in client.get(f"/agents/{agent.pk}").content.decode()
    diff = client.get(f"/agents/{agent.pk}/diff?a=1&b=2").content.decode()
    assert "You answer support tickets politely." in diff and "Be brief." in diff
    assert 'class="del"' in diff and 'class="add"' in diff
    assert client.get(f"/agents/{agent.pk}/diff?a=1&b=9").status_code == 404


def test_roster_pins_versions(workspace):
    client = client_for(workspace, Role.EDITOR)
    client.post("/agents/new", agent_form(name="Researcher"))
    researcher = Agent.objects.get(name="Researcher")
    response = client.post(
        "/agents/new", agent_form(name="Lead", **{"roster-0-agent": researcher.pk, "roster-0-version": "1"})
    )
    assert response.status_code == 302
    lead = Agent.objects.get(name="Lead")
    roster = lead.latest().definition["multiagent"]
    assert roster["type"] == "coordinator"
    assert {"type": "agent", "id": researcher.pk, "version": 1} in roster["agents"]
    bad = client.post(
        "/agents/new", agent_form(name="Lead 2", **{"roster-0-agent": researcher.pk, "roster-0-version": "7"})
    )
    assert bad.status_code == 400 and b"multiagent" in bad.content


def test_agent_list_search_and_archive(workspace):
    client = client_for(workspace, Role.EDITOR)
    client.post("/agents/new", agent_form(name="Alpha"), follow=True)
    client.post("/agents/new", agent_form(name="Beta"), follow=True)
    page = client.get("/agents?q=alp").content.decode()
    assert "Alpha" in page and "Beta" not in page
    beta = Agent.objects.get(name="Beta")
    client.post(f"/agents/{beta.pk}/archive", follow=True)
    beta.refresh_from_db()
    assert beta.archived_at is not None
    assert "Beta" not in client.get("/agents").content.decode()
    assert "Beta" in client.get("/agents?archived=1").content.decode()


def test_viewer_cannot_change_agents_or_environments(workspace):
    editor = client_for(workspace, Role.EDITOR)
    editor.post("/agents/new", agent_form())
    agent = Agent.objects.get()
    env = make_environment(workspace)
    viewer = client_for(workspace, Role.VIEWER)
    assert viewer.get(f"/agents/{agent.pk}").status_code == 200
    assert viewer.get("/agents/new").status_code == 403
    assert viewer.post("/agents/new", agent_form(name="Nope")).status_code == 403
    assert viewer.post(f"/agents/{agent.pk}/edit", agent_form(name="Nope")).status_code == 403
    assert viewer.post(f"/agents/{agent.pk}/archive").status_code == 403
    assert viewer.post(f"/agents/{agent.pk}/start", {"environment_id": env.pk}).status_code == 403
    assert viewer.post("/environments/new", {"name": "x"}).status_code == 403
    assert viewer.post(f"/environments/{env.pk}/edit", {"name": "x"}).status_code == 403
    assert viewer.post(f"/environments/{env.pk}/archive").status_code == 403
    agent.refresh_from_db()
    env.refresh_from_db()
    assert agent.current_version == 1 and agent.archived_at is None and env.name == "default"
    assert Agent.objects.count() == 1 and agent.sessions.count() == 0
    assert "Start a session" not in viewer.get(f"/agents/{agent.pk}").content.decode()


def test_environment_form_limited_networking_and_packages(workspace):
    client = client_for(workspace, Role.EDITOR)
    response = client.post(
        "/environments/new",
        {
            "name": "data",
            "networking": "limited",
            "allowed_hosts": "api.github.com\n*.pypi.org",
            "allow_package_managers": "on",
            "packages-pip": "pandas\nrequests==2.32.3",
        },
    )
    assert response.status_code == 302
    env = Environment.objects.get(name="data")
    assert env.config["networking"]["allowed_hosts"] == ["api.github.com", "*.pypi.org"]
    assert env.config["networking"]["allow_package_managers"] is True
    assert env.config["packages"]["pip"] == ["pandas", "requests==2.32.3"]
    page = client.get(f"/environments/{env.pk}").content.decode()
    assert "api.github.com" in page and 'id="build-status"' in page
    bad = client.post(
        "/environments/new", {"name": "bad", "networking": "limited", "allowed_hosts": "not a host!"}
    )
    assert bad.status_code == 400 and b"allowed_hosts" in bad.content
    dup = client.post("/environments/new", {"name": "data"})
    assert dup.status_code == 400 and b"already exists" in dup.content
    assert (
        client.post(
            f"/environments/{env.pk}/edit", {"name": "data2", "networking": "unrestricted"}
        ).status_code
        == 302
    )
    env.refresh_from_db()
    assert env.name == "data2" and env.config["networking"] == {"type": "unrestricted"}


def test_empty_pages_say_what_to_do(workspace):
    client = client_for(workspace, Role.EDITOR)
    assert b"No agents yet" in client.get("/agents").content
    assert b"No environments yet" in client.get("/environments").content
    client.post("/agents/new", agent_form())
    agent = Agent.objects.get()
    assert b"Create an environment" in client.get(f"/agents/{agent.pk}").content


@pytest.mark.parametrize("role", [Role.EDITOR, Role.VIEWER])
def test_vault_pages_are_admin_only(workspace, role):
    admin = client_for(workspace, Role.ADMIN)
    admin.post("/vaults", {"display_name": "Prod"})
    from vaults.models import Vault

    vault = Vault.objects.get()
    client = client_for(workspace, role)
    assert client.get("/vaults").status_code == 403
    assert client.get(f"/vaults/{vault.pk}").status_code == 403
    assert client.post("/vaults", {"display_name": "Mine"}).status_code == 403
    assert client.post(f"/vaults/{vault.pk}/archive").status_code == 403
    assert Vault.objects.count() == 1 and Vault.objects.get().archived_at is None


def test_admin_manages_credentials_and_never_sees_the_secret(workspace):
    from vaults.models import Credential, Vault

    client = client_for(workspace, Role.ADMIN)
    assert client.post("/vaults", {"display_name": ""}).status_code == 400
    client.post("/vaults", {"display_name": "Prod"})
    vault = Vault.objects.get()
    missing = client.post(
        f"/vaults/{vault.pk}", {"type": "static_bearer", "bearer-url": "https://mcp.example.com/"}
    )
    assert missing.status_code == 400 and b"Enter the secret" in missing.content
    response = client.post(
        f"/vaults/{vault.pk}",
        {
            "type": "static_bearer",
            "display_name": "Docs MCP",
            "bearer-url": "https://mcp.example.com/",
            "bearer-token": "tok-SECRET-1",
        },
    )
    assert response.status_code == 302
    credential = Credential.objects.get()
    page = client.get(f"/vaults/{vault.pk}").content.decode()
    assert "Docs MCP" in page and "https://mcp.example.com/" in page and "tok-SECRET-1" not in page
    client.post(f"/vaults/{vault.pk}/credentials/{credential.pk}/replace", {"secret": "tok-SECRET-2"})
    credential.refresh_from_db()
    assert credential.secret().get("token") == "tok-SECRET-2"
    assert "tok-SECRET-2" not in client.get(f"/vaults/{vault.pk}").content.decode()
    env_var = client.post(
        f"/vaults/{vault.pk}",
        {
            "type": "environment_variable",
            "env-name": "GH_TOKEN",
            "env-hosts": "api.github.com",
            "env-value": "ghp-SECRET",
        },
    )
    assert env_var.status_code == 302
    client.post(f"/vaults/{vault.pk}/credentials/{credential.pk}/archive")
    credential.refresh_from_db()
    assert credential.archived_at is not None
    failed = client.post(
        f"/vaults/{vault.pk}",
        {"type": "environment_variable", "env-name": "", "env-value": "should-not-echo"},
    )
    assert failed.status_code == 400 and b"should-not-echo" not in failed.content


def test_anonymous_is_sent_to_login_for_forms(workspace):
    for url in ["/agents", "/agents/new", "/environments", "/environments/new", "/vaults"]:
        assert Client().get(url).status_code == 302


def test_environment_build_section_polls_while_building(workspace):
    env = make_environment(workspace)
    Environment.objects.filter(pk=env.pk).update(build_status="building", build_log="Collecting pandas\n")
    client = client_for(workspace, Role.VIEWER)
    page = client.get(f"/environments/{env.pk}").content.decode()
    assert 'hx-trigger="every 2s"' in page and "Collecting pandas" in page
    partial = client.get(f"/environments/{env.pk}", headers={"HX-Request": "true"}).content.decode()
    assert partial.startswith('<section id="build"') and "<html" not in partial
    Environment.objects.filter(pk=env.pk).update(
        build_status="failed", build_log="No matching distribution\n"
    )
    done = client.get(f"/environments/{env.pk}", headers={"HX-Request": "true"}).content.decode()
    assert "hx-trigger" not in done and "No matching distribution" in done and "failed" in done


@pytest.mark.parametrize("role", [Role.EDITOR, Role.VIEWER])
def test_only_admins_replace_or_archive_credentials(workspace, role):
    from vaults.models import Credential, Vault

    admin = client_for(workspace, Role.ADMIN)
    admin.post("/vaults", {"display_name": "Prod"})
    vault = Vault.objects.get()
    admin.post(
        f"/vaults/{vault.pk}",
        {"type": "static_bearer", "bearer-url": "https://mcp.example.com/", "bearer-token": "tok-1"},
    )
    credential = Credential.objects.get()
    client = client_for(workspace, role)
    base = f"/vaults/{vault.pk}/credentials/{credential.pk}"
    assert client.post(f"{base}/replace", {"secret": "tok-evil"}).status_code == 403
    assert client.post(f"{base}/archive").status_code == 403
    sneaky = {"type": "static_bearer", "bearer-token": "x"}
    assert client.post(f"/vaults/{vault.pk}", sneaky).status_code == 403
    credential.refresh_from_db()
    assert credential.secret()["token"] == "tok-1" and credential.archived_at is None
    assert Credential.objects.count() == 1
