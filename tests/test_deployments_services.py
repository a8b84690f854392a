"""Deployments: validation, the cron scheduler driven by a controlled clock, exactly one run per due
time under concurrent firing, runs and their sessions, and the deployment webhook events."""

import secrets
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection

from accounts.models import Workspace
from api.errors import ApiError
from deployments import services
from deployments.models import Deployment, DeploymentRun
from sessions.models import Event, Session
from tests.session_fixtures import make_agent, make_environment
from vaults import crypto
from webhooks import services as webhook_services
from webhooks.models import WebhookEvent

TASK = [{"type": "user.message", "content": [{"type": "text", "text": "Write the nightly report."}]}]


@pytest.fixture(autouse=True)
def keys(settings: Any, tmp_path: Any) -> Any:
    settings.GALLEY_VAULT_KEYS = []
    settings.GALLEY_VAULT_KEY_FILE = tmp_path / "vault.keys"
    settings.GALLEY_WEBHOOK_ALLOW_PRIVATE = True
    crypto.reset_cache()
    yield settings
    crypto.reset_cache()


def error_of(call: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def nightly(workspace: Workspace, **extra: Any) -> Deployment:
    suffix = secrets.token_hex(3)
    agent = make_agent(workspace, name=f"a{suffix}", versions=2)
    environment = make_environment(workspace, name=f"e{suffix}")
    body = {
        "name": "nightly",
        "agent": agent.pk,
        "environment_id": environment.pk,
        "initial_events": TASK,
        "metadata": {"team": "ops"},
        "schedule": {"type": "cron", "expression": "0 2 * * *", "timezone": "Europe/Paris"},
        **extra,
    }
    return services.deployment_create(workspace=workspace, body=body)


@pytest.mark.django_db
def test_create_pins_the_latest_agent_version_and_computes_the_schedule(workspace: Workspace) -> None:
    deployment = nightly(workspace)
    wire = services.deployment_wire(deployment)
    assert wire["agent"] == {"type": "agent", "id": deployment.agent_id, "version": 2}
    assert wire["status"] == "active" and wire["paused_reason"] is None
    schedule = wire["schedule"]
    assert schedule["expression"] == "0 2 * * *" and schedule["last_run_at"] is None
    assert len(schedule["upcoming_runs_at"]) == 5
    # 02:00 in Paris is 01:00 or 00:00 UTC depending on the season.
    assert all(
        t.endswith((":00:00.000Z",)) and t[11:13] in ("00", "01") for t in schedule["upcoming_runs_at"]
    )
    assert deployment.next_fire_at is not None and deployment.next_fire_at > deployment.created_at


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        ({"type": "cron", "expression": "0 2 * *", "timezone": "UTC"}, "schedule.expression"),
        ({"type": "cron", "expression": "0 2 L * *", "timezone": "UTC"}, "schedule.expression"),
        ({"type": "cron", "expression": "@daily", "timezone": "UTC"}, "schedule.expression"),
        ({"type": "cron", "expression": "0 25 * * *", "timezone": "UTC"}, "schedule.expression"),
        ({"type": "cron", "expression": "0 2 * * * 2027", "timezone": "UTC"}, "schedule.expression"),
        ({"type": "cron", "expression": "0 2 * * *", "timezone": "Mars/Olympus"}, "schedule.timezone"),
        ({"type": "cron", "expression": "0 2 * * *"}, "schedule.timezone"),
        ({"type": "rrule", "expression": "0 2 * * *", "timezone": "UTC"}, "schedule.type"),
    ],
)
def test_a_bad_schedule_is_a_400_naming_the_field(workspace: Workspace, schedule: Any, field: str) -> None:
    err = error_of(lambda: nightly(workspace, schedule=schedule))
    assert err.status == 400 and err.message.startswith(field + ":"), err.message
    assert not Deployment.objects.exists()


@pytest.mark.django_db
def test_other_bad_fields_are_400s_naming_them(workspace: Workspace) -> None:
    for extra, field in (
        ({"initial_events": []}, "initial_events"),
        ({"initial_events": [{"type": "user.interrupt"}]}, "initial_events[0]"),
        ({"budget": {"type": "limit", "max_list_cost": {"amount": "ten"}}}, "budget.max_list_cost.amount"),
        ({"vault_ids": ["vlt_missing"]}, "vault"),
        ({"schedule_v2": {}}, "schedule_v2"),
    ):
        err = error_of(lambda extra=extra: nightly(workspace, **extra))
        assert err.status in (400, 404) and err.message.lower().startswith(field), (extra, err.message)


@pytest.mark.django_db
def test_a_controlled_clock_fires_each_due_time_once(workspace: Workspace) -> None:
    deployment = nightly(
        workspace, schedule={"type": "cron", "expression": "*/10 * * * *", "timezone": "UTC"}
    )
    start = datetime(2030, 1, 1, 12, 0, 30, tzinfo=UTC)
    Deployment.objects.filter(pk=deployment.pk).update(next_fire_at=datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    assert services.deployments_fire_due(now=start - timedelta(minutes=1)) == []  # not due yet
    [run] = services.deployments_fire_due(now=start)
    assert services.deployments_fire_due(now=start + timedelta(seconds=5)) == []
    assert run.scheduled_at == datetime(2030, 1, 1, 12, 0, tzinfo=UTC) and run.trigger_type == "schedule"
    deployment.refresh_from_db()
    assert deployment.next_fire_at == datetime(2030, 1, 1, 12, 10, tzinfo=UTC)
    [second] = services.deployments_fire_due(now=datetime(2030, 1, 1, 12, 10, 1, tzinfo=UTC))
    assert second.scheduled_at == datetime(2030, 1, 1, 12, 10, tzinfo=UTC)
    # An hour without ticks: the missed due times collapse into one fire, then the schedule resumes.
    [late] = services.deployments_fire_due(now=datetime(2030, 1, 1, 13, 15, tzinfo=UTC))
    assert late.scheduled_at == datetime(2030, 1, 1, 12, 20, tzinfo=UTC)
    deployment.refresh_from_db()
    assert deployment.next_fire_at == datetime(2030, 1, 1, 13, 20, tzinfo=UTC)
    session = Session.objects.get(pk=run.session_id)
    assert session.deployment_id == deployment.pk and session.status == "running"
    assert session.metadata == {} and session.agent_version == 2
    assert Event.objects.filter(session=session, type="user.message").count() == 1
    assert services.run_wire(run)["trigger_context"] == {
        "type": "schedule",
        "scheduled_at": "2030-01-01T12:00:00.000Z",
    }


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_firings_of_one_due_time_make_one_run(workspace: Workspace) -> None:
    deployments = [
        nightly(
            workspace, name=f"n{i}", schedule={"type": "cron", "expression": "* * * * *", "timezone": "UTC"}
        )
        for i in range(3)
    ]
    due = datetime(2030, 6, 1, 8, 0, tzinfo=UTC)
    Deployment.objects.update(next_fire_at=due)
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def tick() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(services.deployments_fire_due(now=due + timedelta(seconds=1)))
        except Exception as exc:  # pragma: no cover - shown by the assertion below
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(r, list) for r in results), results
    assert sum(len(r) for r in results) == 3
    for deployment in deployments:
        runs = DeploymentRun.objects.filter(deployment=deployment)
        assert runs.count() == 1 and runs.get().scheduled_at == due
        assert Session.objects.filter(deployment_id=deployment.pk).count() == 1


@pytest.mark.django_db
def test_a_fire_that_cannot_create_its_session_records_the_error_and_pauses(workspace: Workspace) -> None:
    deployment = nightly(workspace)
    from agents.models import Environment

    Environment.objects.filter(pk=deployment.environment_id).update(
        archived_at=datetime(2029, 1, 1, tzinfo=UTC)
    )
    Deployment.objects.filter(pk=deployment.pk).update(next_fire_at=datetime(2030, 1, 1, tzinfo=UTC))
    [run] = services.deployments_fire_due(now=datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert run.session_id is None and run.error["type"] == "environment_archived_error"
    deployment.refresh_from_db()
    assert deployment.status == "paused" and deployment.paused_reason["type"] == "error"
    assert services.deployments_fire_due(now=datetime(2031, 1, 1, tzinfo=UTC)) == []


@pytest.mark.django_db
def test_pause_unpause_run_now_and_archive(workspace: Workspace) -> None:
    deployment = nightly(workspace)
    paused = services.deployment_pause(deployment=deployment)
    assert paused.status == "paused" and paused.paused_reason == {"type": "manual"}
    Deployment.objects.filter(pk=deployment.pk).update(next_fire_at=datetime(2020, 1, 1, tzinfo=UTC))
    assert services.deployments_fire_due() == []  # a paused deployment never fires on schedule
    run = services.deployment_run_now(deployment=paused)  # but runs by hand
    assert run.trigger_type == "manual" and run.session_id
    assert services.run_wire(run)["trigger_context"] == {"type": "manual"}
    resumed = services.deployment_unpause(deployment=paused)
    assert resumed.status == "active" and resumed.next_fire_at > datetime.now(UTC)  # missed times skipped
    archived = services.deployment_archive(deployment=resumed)
    assert services.deployment_wire(archived)["schedule"]["upcoming_runs_at"] == []
    assert error_of(lambda: services.deployment_run_now(deployment=archived)).status == 400
    assert error_of(lambda: services.deployment_update(deployment=archived, body={"name": "x"})).status == 400


@pytest.mark.django_db
def test_update_repins_the_agent_and_replaces_the_schedule(workspace: Workspace) -> None:
    deployment = nightly(workspace)
    updated = services.deployment_update(
        deployment=deployment,
        body={"agent": {"type": "agent", "id": deployment.agent_id, "version": 1}, "schedule": None},
    )
    assert updated.agent_version == 1 and updated.schedule is None and updated.next_fire_at is None
    err = error_of(
        lambda: services.deployment_update(
            deployment=deployment, body={"schedule": {"type": "cron", "expression": "x", "timezone": "UTC"}}
        )
    )
    assert err.message.startswith("schedule.expression:")


@pytest.mark.django_db
def test_deployment_changes_and_runs_emit_webhook_events(workspace: Workspace) -> None:
    webhook_services.endpoint_create(
        workspace=workspace, body={"url": "https://hooks.example.com", "enabled_events": ["*"]}
    )
    deployment = nightly(workspace)
    services.deployment_pause(deployment=deployment)
    services.deployment_unpause(deployment=deployment)
    run = services.deployment_run_now(deployment=deployment)
    services.deployment_update(deployment=deployment, body={"name": "renamed"})
    services.deployment_archive(deployment=deployment)
    rows = list(WebhookEvent.objects.order_by("created_at", "id").values_list("type", "data"))
    deployment_events = [(t, data["id"]) for t, data in rows if t.startswith("deployment")]
    assert deployment_events == [
        ("deployment.created", deployment.pk),
        ("deployment.paused", deployment.pk),
        ("deployment.unpaused", deployment.pk),
        ("deployment_run.started", run.pk),
        ("deployment_run.succeeded", run.pk),
        ("deployment.updated", deployment.pk),
        ("deployment.archived", deployment.pk),
    ]
    assert ("session.created", {"type": "session.created", "id": run.session_id}) in [
        (t, {"type": d["type"], "id": d["id"]}) for t, d in rows
    ]


@pytest.mark.django_db
def test_resource_tokens_are_write_only(workspace: Workspace) -> None:
    resources = [
        {
            "type": "github_repository",
            "url": "https://github.com/acme/app",
            "authorization_token": "ghp_secret1",
        }
    ]
    deployment = nightly(workspace, resources=resources)
    wire = services.deployment_wire(deployment)
    assert wire["resources"] == [{"type": "github_repository", "url": "https://github.com/acme/app"}]
    assert "ghp_secret1" not in str(wire) and "ghp_secret1" not in deployment.resources_ciphertext


@pytest.mark.django_db
def test_an_explicit_null_budget_makes_uncapped_sessions_and_an_omitted_one_the_default(
    workspace: Workspace,
) -> None:
    """`budget: null` on a deployment is the wire's "uncapped", as on sessions.create; only a
    deployment that leaves the field out gets the workspace's default session budget."""
    from costs.models import WorkspaceBudget

    WorkspaceBudget.objects.create(workspace=workspace, session_default_cents=250)
    default = {"type": "limit", "max_list_cost": {"amount": "250", "currency": "USD"}}
    own = {"type": "limit", "max_list_cost": {"amount": "900", "currency": "USD"}}

    def session_budget(deployment: Deployment) -> Any:
        run = services.deployment_run_now(deployment=deployment)
        assert run.session_id, run.error
        return Session.objects.get(pk=run.session_id).budget

    omitted = nightly(workspace)
    assert session_budget(omitted) == default
    uncapped = nightly(workspace, budget=None)
    assert "budget" not in services.deployment_wire(uncapped)  # absent when no budget is set
    assert session_budget(uncapped) is None
    capped = services.deployment_update(deployment=uncapped, body={"budget": own})
    assert services.deployment_wire(capped)["budget"] == own and session_budget(capped) == own
    cleared = services.deployment_update(deployment=capped, body={"budget": None})
    assert session_budget(cleared) is None  # "send null to clear (sessions created afterwards are uncapped)"
    renamed = services.deployment_update(deployment=cleared, body={"name": "still uncapped"})
    assert session_budget(renamed) is None  # an update that leaves budget out keeps it
    assert session_budget(services.deployment_update(deployment=omitted, body={"name": "x"})) == default
