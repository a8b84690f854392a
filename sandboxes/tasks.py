from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown


@shared_task(name="sandbox.build_environment_packages", acks_late=True)
def build_environment_packages(environment_id: str) -> str:
    from sandboxes.packages import packages_build

    return packages_build(environment_id=environment_id)


@shared_task(name="sandbox.reap_idle")
def reap_idle_sandboxes() -> int:
    """Stops this worker's idle shells (each worker also reaps on every tool call), and releases the
    volumes a killed worker left mounted on this host (each worker also does every 30 s)."""
    from sandboxes.services import sandbox_reap_idle, sandboxes_release_orphans

    sandboxes_release_orphans()
    return sandbox_reap_idle()


@shared_task(name="sandbox.release")
def release_session_sandboxes(session_id: str) -> None:
    """A terminated session's sandboxes stop and their volumes are unmounted on this host."""
    from sandboxes.services import sandbox_release

    sandbox_release(session_id=session_id)


@worker_shutdown.connect
def _release_on_shutdown(**_kwargs: Any) -> None:
    # A stopping worker leaves no mounted volume (and no loop device) behind.
    from sandboxes.services import sandboxes_release_all

    sandboxes_release_all()


@worker_ready.connect
def _release_orphans_on_start(**_kwargs: Any) -> None:
    # A worker that replaces a SIGKILLed one finds that one's volumes still mounted: release them.
    from sandboxes.services import sandboxes_sweep_start

    sandboxes_sweep_start()
