"""Celery entry points of webhook delivery: thin wrappers over webhooks.services."""

from celery import shared_task

from webhooks import services


@shared_task(name="webhooks.deliver")
def deliver(endpoint_id: str, ordering_key: str) -> int:
    return services.deliveries_run(endpoint_id=endpoint_id, ordering_key=ordering_key)


@shared_task(name="webhooks.purge")
def purge() -> int:
    return services.webhook_events_purge()


@shared_task(name="webhooks.sweep")
def sweep() -> int:
    return services.deliveries_sweep()
