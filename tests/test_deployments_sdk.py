"""Deployments and deployment runs through the official SDK (strict response validation) against a
live Galley: create, read, update, pause, unpause, run now, the runs and their sessions."""

import secrets

import anthropic
import pytest

from tests.live import LiveGalley
from tests.model_server import ScriptedModel, text

pytestmark = pytest.mark.slow

TASK = [{"type": "user.message", "content": [{"type": "text", "text": "Write the nightly report."}]}]


def test_a_deployment_through_the_sdk(galley: LiveGalley, model: ScriptedModel) -> None:
    client = galley.client()
    suffix = secrets.token_hex(3)
    agent = client.beta.agents.create(name=f"reporter-{suffix}", model="claude-sonnet-4-6")
    environment = client.beta.environments.create(name=f"reporter-env-{suffix}")
    deployment = client.beta.deployments.create(
        name="nightly report",
        agent=agent.id,
        environment_id=environment.id,
        initial_events=TASK,  # type: ignore[arg-type]
        metadata={"team": "ops"},
        schedule={"type": "cron", "expression": "0 2 * * 1-5", "timezone": "America/New_York"},
    )
    assert deployment.id.startswith("depl_") and deployment.status == "active"
    assert deployment.agent.id == agent.id and deployment.agent.version == 1
    assert deployment.schedule is not None and len(deployment.schedule.upcoming_runs_at or []) == 5
    assert client.beta.deployments.retrieve(deployment.id).name == "nightly report"
    assert deployment.id in [d.id for d in client.beta.deployments.list()]
    # The SDK sends `budget=None` as null: accepted (uncapped sessions), and absent on the wire.
    capped = client.beta.deployments.update(
        deployment.id, budget={"type": "limit", "max_list_cost": {"amount": "5", "currency": "USD"}}
    )
    assert capped.budget is not None and capped.budget.max_list_cost.amount == "5"
    assert client.beta.deployments.update(deployment.id, budget=None).budget is None

    paused = client.beta.deployments.pause(deployment.id)
    assert (
        paused.status == "paused"
        and paused.paused_reason is not None
        and paused.paused_reason.type == "manual"
    )
    assert client.beta.deployments.unpause(deployment.id).status == "active"
    updated = client.beta.deployments.update(deployment.id, description="weekdays", metadata={"team": None})
    assert updated.description == "weekdays" and updated.metadata == {}

    model.push(text("Report: all green."))
    run = client.beta.deployments.run(deployment.id)
    assert run.id.startswith("drun_") and run.trigger_context.type == "manual" and run.error is None
    assert run.session_id is not None
    session = client.beta.sessions.retrieve(run.session_id)
    assert session.deployment_id == deployment.id
    assert [s.id for s in client.beta.sessions.list(deployment_id=deployment.id)] == [session.id]
    assert client.beta.deployment_runs.retrieve(run.id).session_id == session.id
    runs = client.beta.deployment_runs.list(deployment_id=deployment.id)
    assert [r.id for r in runs] == [run.id]
    assert list(client.beta.deployment_runs.list(deployment_id=deployment.id, has_error=True)) == []

    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.deployments.create(
            name="bad",
            agent=agent.id,
            environment_id=environment.id,
            initial_events=TASK,  # type: ignore[arg-type]
            schedule={"type": "cron", "expression": "0 2 * * *", "timezone": "Nowhere/Land"},
        )
    assert "schedule.timezone" in info.value.message
    archived = client.beta.deployments.archive(deployment.id)
    assert archived.archived_at is not None and archived.schedule is not None
    assert archived.schedule.upcoming_runs_at == []
