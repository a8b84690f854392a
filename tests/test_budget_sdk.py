"""A session budget through the official SDK (strict validation) against a live Galley whose
worker talks to a scripted model: a stop at the budget, a refused message, a raise that resumes."""

import secrets

import anthropic
import pytest

from tests.live import LiveGalley
from tests.live_fixtures import until_idle
from tests.model_server import ScriptedModel, text

pytestmark = pytest.mark.slow


def message(value: str) -> dict:
    return {"type": "user.message", "content": [{"type": "text", "text": value}]}


def test_a_budget_stops_the_session_and_a_raise_lets_it_continue(
    galley: LiveGalley, model: ScriptedModel
) -> None:
    client = galley.client()
    suffix = secrets.token_hex(3)
    agent = client.beta.agents.create(name=f"budget-{suffix}", model="claude-sonnet-4-6")
    environment = client.beta.environments.create(name=f"budget-env-{suffix}")
    session = client.beta.sessions.create(
        agent=agent.id,
        environment_id=environment.id,
        budget={"type": "limit", "max_list_cost": {"amount": "2", "currency": "USD"}},
    )
    assert session.budget is not None and session.budget.max_list_cost.amount == "2"
    model.push(text("An expensive answer.", usage={"output_tokens": 2000}))  # 3 cents

    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(session.id, events=[message("Hi")])
        first = until_idle(stream)
        assert first[-1].stop_reason.type == "end_turn"
        requests = len(model.requests)

        client.beta.sessions.events.send(session.id, events=[message("More please")])
        second = until_idle(stream)
        types = [e.type for e in second]
        assert types[-2:] == ["session.usage", "session.status_idle"]
        assert second[-1].stop_reason.type == "budget_reached"
        usage = second[-2]
        assert int(usage.usage.list_cost.amount) >= 3 and usage.budget.max_list_cost.amount == "2"
        assert len(model.requests) == requests

        with pytest.raises(anthropic.BadRequestError) as info:
            client.beta.sessions.events.send(session.id, events=[message("Still there?")])
        assert "budget" in info.value.message
        with pytest.raises(anthropic.BadRequestError) as info:
            client.beta.sessions.update(
                session.id, budget={"type": "limit", "max_list_cost": {"amount": "2", "currency": "USD"}}
            )
        assert "budget" in info.value.message

        model.push(text("Continuing now."))
        raised = client.beta.sessions.update(
            session.id, budget={"type": "limit", "max_list_cost": {"amount": "500", "currency": "USD"}}
        )
        assert raised.budget.max_list_cost.amount == "500"
        third = until_idle(stream)
    assert third[0].type == "session.updated"
    assert any(e.type == "agent.message" and e.content[0].text == "Continuing now." for e in third)
    assert third[-1].stop_reason.type == "end_turn"
    done = client.beta.sessions.retrieve(session.id)
    assert done.status == "idle" and int(done.usage.list_cost.amount) >= 3


def test_a_budget_cannot_be_added_after_create(galley: LiveGalley) -> None:
    client = galley.client()
    suffix = secrets.token_hex(3)
    agent = client.beta.agents.create(name=f"nobudget-{suffix}", model="claude-sonnet-4-6")
    environment = client.beta.environments.create(name=f"nobudget-env-{suffix}")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.sessions.update(
            session.id, budget={"type": "limit", "max_list_cost": {"amount": "100", "currency": "USD"}}
        )
    assert info.value.body["error"]["details"]["error_code"] == "budget_create_only"
