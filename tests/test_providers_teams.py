"""Mixed-model teams: a coordinator on Claude, a member on an OpenAI-compatible server; each call is
priced for its own model and analytics shows cost per provider, model and agent."""

import json
from collections.abc import Iterator
from typing import Any

import pytest

from accounts.models import Role
from console.analytics import report_build
from harness import pricing
from providers import registry
from providers.config import providers_parse
from providers.models import ModelCall
from sessions.models import Session, SessionThread
from tests.console_factories import client_for
from tests.harness_helpers import harness_model, make_session, say, step
from tests.model_server import ScriptedModel, text, tool_call
from tests.openai_server import ScriptedOpenAI, scripted_openai
from tests.openai_server import text as local_text

pytestmark = pytest.mark.django_db(transaction=True)

MEMBER = {
    "type": "agent",
    "id": "agent_cheap",
    "version": 1,
    "name": "cheap-researcher",
    "description": "Finds facts cheaply.",
    "system": "You research.",
    "model": {"id": "local/gpt-test", "effort": None, "speed": "standard", "inference_geo": None},
    "tools": [],
    "mcp_servers": [],
    "skills": [],
}


@pytest.fixture
def models(settings: Any) -> Iterator[tuple[ScriptedModel, ScriptedOpenAI]]:
    with harness_model(settings) as claude, scripted_openai() as local:
        entry = {
            "name": "local",
            "type": "openai",
            "base_url": local.base_url,
            "models": [{"id": "gpt-test", "input_price": 0.1, "output_price": 0.2}],
        }
        settings.GALLEY_PROVIDERS = providers_parse(json.dumps([entry]), {})
        registry.reset()
        yield claude, local
        registry.reset()


def _team() -> Session:
    session = make_session(model="claude-sonnet-4-6", system="You coordinate.")
    snapshot = dict(session.agent_snapshot)
    snapshot["multiagent"] = {"type": "coordinator", "agents": [MEMBER, {"type": "self"}]}
    Session.objects.filter(pk=session.pk).update(agent_snapshot=snapshot)
    SessionThread.objects.create(
        id=f"sthr_primary_{session.pk[-8:]}",
        session=session,
        parent=None,
        agent_name="tester",
        agent_snapshot=snapshot,
    )
    return Session.objects.get(pk=session.pk)


def test_each_member_runs_on_its_own_provider_and_is_priced_for_its_own_model(
    models: tuple[ScriptedModel, ScriptedOpenAI], workspace: Any
) -> None:
    claude, local = models
    session = _team()
    claude.push(
        tool_call(
            "send_to_agent",
            {"agent_name": "cheap-researcher", "message": "Find it."},
            usage={"input_tokens": 1000, "output_tokens": 100},
        ),
        text("It is 42.", usage={"input_tokens": 2000, "output_tokens": 10}),
    )
    local.push(local_text("Found: 42.", prompt_tokens=50_000, completion_tokens=5_000, cached_tokens=10_000))
    say(session, "Go")
    step(session)
    assert [r["model"] for r in claude.requests] == ["claude-sonnet-4-6", "claude-sonnet-4-6"]
    assert [r["model"] for r in local.requests] == ["gpt-test"]
    calls = list(ModelCall.objects.filter(session=session).order_by("id"))
    assert [(c.provider, c.model, c.agent_name) for c in calls] == [
        ("anthropic", "claude-sonnet-4-6", ""),
        ("local", "local/gpt-test", "cheap-researcher"),
        ("anthropic", "claude-sonnet-4-6", ""),
    ]
    member = calls[1]
    assert (member.input_tokens, member.cache_read_input_tokens, member.output_tokens) == (
        40_000,
        10_000,
        5_000,
    )
    # 40k * $0.1 + 10k cached * $0.1 * 0.1 + 5k * $0.2, per million tokens
    assert member.cost_micros == 4_000 + 100 + 1_000
    sonnet = pricing.model_price("claude-sonnet-4-6")
    assert calls[0].cost_micros == round(1000 * sonnet.input + 100 * sonnet.output)
    row = Session.objects.get(pk=session.pk)
    assert row.token_cost_micros == sum(c.cost_micros for c in calls)

    today = row.created_at.date()
    by_provider = dict(report_build(workspace=workspace, start=today, end=today, group="provider").rows)
    assert set(by_provider) == {"anthropic", "local"}
    assert by_provider["local"].token_cost_micros == member.cost_micros
    assert by_provider["anthropic"].input_tokens == 3000
    detailed = dict(report_build(workspace=workspace, start=today, end=today, group="provider_model").rows)
    assert set(detailed) == {
        "anthropic / claude-sonnet-4-6 / tester",
        "local / local/gpt-test / cheap-researcher",
    }

    page = client_for(workspace, Role.VIEWER).get("/analytics?group=provider_model").content.decode()
    assert "local / local/gpt-test / cheap-researcher" in page
    assert "Provider / model / agent" in page
