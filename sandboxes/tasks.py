from celery import shared_task


@shared_task(name="sandbox.build_environment_packages", acks_late=True)
def build_environment_packages(environment_id: str) -> str:
    from sandboxes.packages import packages_build

    return packages_build(environment_id=environment_id)


@shared_task(name="sandbox.reap_idle")
def reap_idle_sandboxes() -> int:
    """Stops this worker's idle shells (each worker also reaps on every tool call)."""
    from sandboxes.services import sandbox_reap_idle

    return sandbox_reap_idle()
