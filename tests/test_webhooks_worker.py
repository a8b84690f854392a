"""Webhook delivery on real Celery worker processes: enqueued on commit, and a worker SIGKILLed in
the middle of a delivery leaves it to the sweeper of the next worker (at least once)."""

import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from django.db import transaction

from accounts.models import Workspace
from tests.harness_helpers import wait_for
from tests.harness_worker import Worker, celery_worker, purge_embedded_broker
from tests.webhook_receiver import Received, webhook_receiver
from vaults import crypto
from webhooks import services
from webhooks.models import DeliveryState, WebhookDelivery

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

WORKER_ENV = {
    "GALLEY_WEBHOOK_ALLOW_PRIVATE": "1",
    "GALLEY_WEBHOOK_SWEEP_SECONDS": "0.5",
    "GALLEY_WEBHOOK_CLAIM_SECONDS": "2",
    "GALLEY_WEBHOOK_RETRY_SCHEDULE": "0.5,0.5,0.5",
}


@pytest.fixture(autouse=True)
def webhook_settings(settings: Any) -> Iterator[Any]:
    purge_embedded_broker()
    settings.GALLEY_WEBHOOK_ALLOW_PRIVATE = True
    crypto.reset_cache()
    yield settings


def test_a_worker_killed_mid_delivery_delivers_it_later(workspace: Workspace) -> None:
    holder: dict[str, Worker] = {}
    killed = threading.Event()

    def kill_on_first(item: Received) -> None:
        if not killed.is_set():
            killed.set()
            holder["worker"].kill()  # the worker dies before it sees an answer

    with webhook_receiver(on_request=kill_on_first) as rx:
        endpoint, secret = services.endpoint_create(
            workspace=workspace, body={"url": rx.url, "enabled_events": ["agent.created"]}
        )
        with celery_worker(WORKER_ENV) as first:
            holder["worker"] = first
            with transaction.atomic():
                event = services.webhook_event_emit(
                    workspace=workspace, type="agent.created", data={"id": "agent_x"}
                )
            assert event is not None
            wait_for(killed.is_set, timeout=60)
        delivery = WebhookDelivery.objects.get()
        assert delivery.state == DeliveryState.PENDING and delivery.claimed_until is not None
        with celery_worker(WORKER_ENV):
            wait_for(lambda: WebhookDelivery.objects.get().state == DeliveryState.DELIVERED, timeout=60)
        ids = [r.headers["webhook-id"] for r in rx.received]
    assert ids == [event.pk, event.pk]
    sdk = anthropic.Anthropic(api_key="unused", base_url="http://127.0.0.1:9")
    parsed = sdk.beta.webhooks.unwrap(rx.received[-1].body, headers=rx.received[-1].headers, key=secret)
    assert parsed.id == event.pk and parsed.data.id == "agent_x"
    assert WebhookDelivery.objects.get().attempts == 1  # the killed attempt never recorded an outcome


def test_a_retry_is_made_at_its_time_not_at_the_next_sweep(workspace: Workspace) -> None:
    env = {**WORKER_ENV, "GALLEY_WEBHOOK_SWEEP_SECONDS": "3600", "GALLEY_WEBHOOK_RETRY_SCHEDULE": "1"}
    with webhook_receiver(script=[500]) as rx:
        services.endpoint_create(
            workspace=workspace, body={"url": rx.url, "enabled_events": ["agent.created"]}
        )
        with celery_worker(env):
            with transaction.atomic():
                services.webhook_event_emit(workspace=workspace, type="agent.created", data={"id": "agent_x"})
            # No sweep for an hour: the retry was enqueued for its time when the first attempt failed.
            wait_for(lambda: WebhookDelivery.objects.get().state == DeliveryState.DELIVERED, timeout=30)
        assert [r.answered for r in rx.received] == [500, 200]
    attempts = list(WebhookDelivery.objects.get().attempt_rows.order_by("number"))
    gap = (attempts[1].started_at - attempts[0].started_at).total_seconds()
    assert 0.9 * 1 <= gap < 10, gap  # the schedule's 1 s (+-10 % jitter), not the sweep's hour
