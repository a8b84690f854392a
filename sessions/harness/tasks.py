from celery import shared_task


@shared_task(name="harness.run_session_step", acks_late=True)
def run_session_step(session_id: str) -> None:
    """Placeholder until the harness lands (issue 3): user events stay queued (processed_at null)."""
    return None
