"""Celery entry point of the scheduler (on beat): thin wrapper over deployments.services."""

from celery import shared_task

from deployments import services


@shared_task(name="deployments.fire_due")
def fire_due() -> int:
    return len(services.deployments_fire_due())
