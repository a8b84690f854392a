from celery import shared_task

from files import services


@shared_task(name="files.purge_expired", ignore_result=True)
def purge_expired() -> None:
    """Periodic: drop the bytes of expired files (downloads already refuse them)."""
    services.file_purge_expired()
