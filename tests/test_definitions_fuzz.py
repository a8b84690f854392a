"""Random JSON shaped like our request bodies: the services answer ApiError (a 4xx) or succeed,
never another exception (which the API would turn into a 500)."""

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import services as agent_services
from api.errors import ApiError
from api.ids import new_id
from vaults import crypto
from vaults import services as vault_services

pytestmark = pytest.mark.django_db

KEYS = [
    "type",
    "name",
    "model",
    "id",
    "effort",
    "speed",
    "inference_geo",
    "tools",
    "configs",
    "default_config",
    "enabled",
    "permission_policy",
    "allowed_domains",
    "blocked_domains",
    "url_sources",
    "user_input",
    "client_tool_results",
    "server_tool_results",
    "only",
    "tools",
    "user_location",
    "max_content_tokens",
    "mcp_server_name",
    "mcp_servers",
    "url",
    "description",
    "input_schema",
    "properties",
    "required",
    "skills",
    "skill_id",
    "version",
    "multiagent",
    "agents",
    "execution_identity",
    "role_arn",
    "metadata",
    "system",
    "config",
    "networking",
    "allowed_hosts",
    "allow_mcp_servers",
    "allow_package_managers",
    "packages",
    "pip",
    "npm",
    "scope",
    "auth",
    "mcp_server_url",
    "token",
    "access_token",
    "expires_at",
    "refresh",
    "refresh_token",
    "client_id",
    "token_endpoint",
    "token_endpoint_auth",
    "client_secret",
    "secret_name",
    "secret_value",
    "injection_location",
    "subagents",
    "workflows",
    "inline_agents",
    "predefined_agents",
    "header",
    "body",
    "display_name",
]
WORDS = [
    "agent_toolset_20260401",
    "mcp_toolset",
    "custom",
    "bash",
    "web_fetch",
    "web_search",
    "always_ask",
    "auto",
    "coordinator",
    "self",
    "agent",
    "advisor",
    "anthropic",
    "xlsx",
    "skill_x",
    "cloud",
    "self_hosted",
    "limited",
    "unrestricted",
    "static_bearer",
    "mcp_oauth",
    "environment_variable",
    "none",
    "all",
    "client_secret_post",
    "https://a.example/mcp",
    "object",
    "high",
    "fast",
    "approximate",
    "service_account",
    "aws_role",
    "multiagent_20261001",
    "enabled",
    "disabled",
    "",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.sampled_from(WORDS),
    # NUL and lone surrogates are refused before the services by the API layer (no database stores them).
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8),
    st.floats(allow_nan=True),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children, max_size=5)
    ),
    max_leaves=25,
)
bodies = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6)
FUZZ = settings(
    max_examples=int(os.environ.get("GALLEY_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(autouse=True)
def isolated_keys(settings, tmp_path):  # type: ignore[no-untyped-def]
    settings.GALLEY_VAULT_KEYS = []
    settings.GALLEY_VAULT_KEY_FILE = tmp_path / "vault.keys"
    crypto.reset_cache()
    yield
    crypto.reset_cache()


def only_api_errors(call: Any) -> None:
    try:
        call()
    except ApiError as exc:
        assert 400 <= exc.status < 500


@FUZZ
@given(body=bodies)
def test_agent_create_and_update_never_crash(workspace, body):
    only_api_errors(
        lambda: agent_services.agent_create(
            workspace=workspace, body={"name": "n", "model": "claude-m", **body}
        )
    )
    agent = agent_services.agent_create(workspace=workspace, body={"name": "n", "model": "claude-m"})
    only_api_errors(lambda: agent_services.agent_update(agent=agent, body=body))


@FUZZ
@given(body=bodies)
def test_environment_create_and_update_never_crash(workspace, body):
    only_api_errors(
        lambda: agent_services.environment_create(workspace=workspace, body={"name": new_id("n"), **body})
    )
    env = agent_services.environment_create(workspace=workspace, body={"name": new_id("name")})
    only_api_errors(lambda: agent_services.environment_update(environment=env, body=body))


@FUZZ
@given(body=bodies)
def test_credential_create_and_update_never_crash(workspace, body):
    vault = vault_services.vault_create(workspace=workspace, body={"display_name": "v"})
    only_api_errors(lambda: vault_services.credential_create(vault=vault, body=body))
    auth = {
        "type": "mcp_oauth",
        "mcp_server_url": "https://a.example/mcp",
        "access_token": "t",
        "refresh": {
            "refresh_token": "r",
            "client_id": "c",
            "token_endpoint": "https://a.example/t",
            "token_endpoint_auth": {"type": "none"},
        },
    }
    credential = vault_services.credential_create(vault=vault, body={"auth": auth})
    only_api_errors(lambda: vault_services.credential_update(credential=credential, body=body))


VALID_AGENT = {
    "name": "n",
    "model": {"id": "claude-m", "effort": {"type": "low"}, "speed": "fast", "inference_geo": "eu"},
    "tools": [
        {
            "type": "agent_toolset_20260401",
            "default_config": {"enabled": True, "permission_policy": {"type": "always_ask"}},
            "configs": [
                {
                    "name": "web_fetch",
                    "allowed_domains": ["a.com"],
                    "max_content_tokens": 10,
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
                    "blocked_domains": ["b.com"],
                    "user_location": {"type": "approximate", "city": "x"},
                },
            ],
        },
        {
            "type": "mcp_toolset",
            "mcp_server_name": "s",
            "configs": [{"name": "q", "permission_policy": {"type": "auto"}}],
        },
        {
            "type": "custom",
            "name": "c",
            "description": "d",
            "input_schema": {"type": "object", "required": ["a"]},
        },
    ],
    "mcp_servers": [{"type": "url", "name": "s", "url": "https://a.example/mcp"}],
    "skills": [{"type": "anthropic", "skill_id": "pdf", "version": "latest"}],
    "multiagent": {
        "type": "coordinator",
        "agents": [{"type": "self"}, {"type": "advisor", "model": "claude-m"}],
    },
    "execution_identity": {"type": "aws_role", "role_arn": "arn:aws:iam::1:role/x"},
    "metadata": {"k": "v"},
}
VALID_ENV = {
    "name": "env",
    "config": {
        "type": "cloud",
        "networking": {"type": "limited", "allowed_hosts": ["a.com"], "allow_package_managers": True},
        "packages": {"pip": ["pandas==2"], "npm": ["x"]},
    },
    "metadata": {"k": "v"},
}
VALID_CREDENTIAL = {
    "auth": {
        "type": "environment_variable",
        "secret_name": "T",
        "secret_value": "s",
        "networking": {"type": "limited", "allowed_hosts": ["a.com"]},
        "injection_location": {"header": True, "body": True},
    },
    "display_name": "d",
}


@st.composite
def mutated(draw: Any, template: dict[str, Any]) -> Any:
    """The template with one randomly chosen node replaced by random JSON."""
    import copy

    body = copy.deepcopy(template)
    parent: Any = None
    key: Any = None
    node: Any = body
    while isinstance(node, dict | list) and node and draw(st.integers(0, 3)) > 0:
        key = draw(st.sampled_from(sorted(node)) if isinstance(node, dict) else st.integers(0, len(node) - 1))
        parent, node = node, node[key]
    replacement = draw(json_values)
    if parent is None:
        return replacement if isinstance(replacement, dict) else body
    parent[key] = replacement
    return body


@FUZZ
@given(data=st.data())
def test_mutated_valid_bodies_never_crash(workspace, data):
    agent_body = data.draw(mutated(VALID_AGENT))
    only_api_errors(lambda: agent_services.agent_create(workspace=workspace, body=agent_body))
    env_body = data.draw(mutated(VALID_ENV))
    if isinstance(env_body, dict):
        env_body = {**env_body, "name": new_id("n")} if env_body.get("name") == "env" else env_body
    only_api_errors(lambda: agent_services.environment_create(workspace=workspace, body=env_body))
    vault = vault_services.vault_create(workspace=workspace, body={"display_name": "v"})
    credential_body = data.draw(mutated(VALID_CREDENTIAL))
    only_api_errors(lambda: vault_services.credential_create(vault=vault, body=credential_body))


def test_the_fuzz_templates_are_valid(workspace):
    agent_services.agent_create(workspace=workspace, body=VALID_AGENT)
    agent_services.environment_create(workspace=workspace, body=VALID_ENV)
    vault = vault_services.vault_create(workspace=workspace, body={"display_name": "v"})
    vault_services.credential_create(vault=vault, body=VALID_CREDENTIAL)
