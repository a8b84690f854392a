"""The scheduler on real processes: two Celery workers, each with its own embedded beat ticking
fast, fire a due deployment exactly once."""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from accounts.models import Workspace
from deployments import services
from deployments.models import Deployment, DeploymentRun
from sessions.models import Session
from tests.harness_worker import celery_worker, purge_embedded_broker
from tests.session_fixtures import make_agent, make_environment
from vaults import crypto

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TASK = [{"type": "user.message", "content": [{"type": "text", "text": "Report."}]}]


def test_two_beat_processes_fire_a_due_time_once(workspace: Workspace, settings: Any) -> None:
    purge_embedded_broker()
    crypto.reset_cache()
    deployment = services.deployment_create(
        workspace=workspace,
        body={
            "name": "hourly",
            "agent": make_agent(workspace).pk,
            "environment_id": make_environment(workspace).pk,
            "initial_events": TASK,
            "schedule": {"type": "cron", "expression": "0 * * * *", "timezone": "UTC"},
        },
    )
    # The controlled clock: the due time is moved to just behind the real one.
    due = (timezone.now() - timedelta(seconds=1)).replace(microsecond=0)
    Deployment.objects.filter(pk=deployment.pk).update(next_fire_at=due)
    env = {"GALLEY_DEPLOYMENT_TICK_SECONDS": "0.1", "GALLEY_MODEL_MAX_RETRIES": "0"}
    with celery_worker(env, concurrency=4) as first, celery_worker(env, concurrency=4) as second:
        deadline = time.monotonic() + 60
        while not DeploymentRun.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)  # both beats keep ticking many more times
        for worker in (first, second):
            assert worker.log().count("deployments.fire_due") > 5
    runs = list(DeploymentRun.objects.all())
    assert len(runs) == 1 and runs[0].scheduled_at == due.astimezone(UTC)
    assert Session.objects.filter(deployment_id=deployment.pk).count() == 1
    deployment.refresh_from_db()
    assert deployment.next_fire_at is not None and deployment.next_fire_at > datetime.now(UTC)
