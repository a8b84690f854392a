"""The workspace's default session budget through the official SDK (strict validation) against a
live Galley with a real Celery worker: a session created without a budget gets the admin's default
and is stopped by it before the model request that would overspend; one created with an explicit
`budget: null` has none."""

import secrets
from collections.abc import Iterator

import anthropic
import pytest

from tests.live import LiveGalley
from tests.live_fixtures import until_idle
from tests.model_server import ScriptedModel, text

pytestmark = pytest.mark.slow


def _set_default(galley: LiveGalley, session_usd: str) -> None:
    galley.manage(
        "shell",
        "-c",
        (
            "from accounts.services import workspace_get_default; from costs.services import budget_set; "
            f"budget_set(workspace=workspace_get_default(), monthly_usd='', session_usd='{session_usd}', "
            "warn_percent='80')"
        ),
    )


@pytest.fixture
def default_budget(galley: LiveGalley) -> Iterator[None]:
    _set_default(galley, "0.02")
    try:
        yield
    finally:
        _set_default(galley, "")  # the module's other sessions are not this test's


def message(value: str) -> dict:
    return {"type": "user.message", "content": [{"type": "text", "text": value}]}


def test_a_session_without_a_budget_is_stopped_by_the_workspace_default(
    galley: LiveGalley, model: ScriptedModel, default_budget: None
) -> None:
    client = galley.client()
    suffix = secrets.token_hex(3)
    agent = client.beta.agents.create(name=f"default-budget-{suffix}", model="claude-sonnet-4-6")
    environment = client.beta.environments.create(name=f"default-budget-env-{suffix}")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    assert session.budget is not None
    assert (session.budget.max_list_cost.amount, session.budget.max_list_cost.currency) == ("2", "USD")
    model.push(text("An expensive answer.", usage={"output_tokens": 2000}))  # 3 cents

    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(session.id, events=[message("Hi")])
        first = until_idle(stream)
        assert first[-1].stop_reason.type == "end_turn"
        requests = len(model.requests)
        client.beta.sessions.events.send(session.id, events=[message("More please")])
        second = until_idle(stream)
    assert second[-1].stop_reason.type == "budget_reached"
    assert len(model.requests) == requests, "the default budget must stop the model request"
    done = client.beta.sessions.retrieve(session.id)
    assert done.status == "idle" and int(done.usage.list_cost.amount) >= 3


def test_an_explicit_null_budget_is_an_uncapped_session_despite_the_default(
    galley: LiveGalley, default_budget: None
) -> None:
    client = galley.client()
    suffix = secrets.token_hex(3)
    agent = client.beta.agents.create(name=f"null-budget-{suffix}", model="claude-sonnet-4-6")
    environment = client.beta.environments.create(name=f"null-budget-env-{suffix}")
    # The SDK's create type has no null (omit it for "uncapped"); a caller passing None sends null.
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, budget=None)  # type: ignore[arg-type]
    assert session.budget is None
    assert client.beta.sessions.retrieve(session.id).budget is None
    # Created without a budget, so none can be added later (the spec's budget_create_only).
    limit = {"type": "limit", "max_list_cost": {"amount": "500", "currency": "USD"}}
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.sessions.update(session.id, budget=limit)
    assert refused.value.body["error"]["details"]["error_code"] == "budget_create_only"  # type: ignore[index]
    omitted = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    assert omitted.budget is not None  # leaving it out still gets the default
