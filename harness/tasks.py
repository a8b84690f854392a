from celery import shared_task

from harness import services
from harness.dispatch import session_kick


@shared_task(name="harness.run_session_step", acks_late=True)
def run_session_step(session_id: str) -> None:
    services.session_step(session_id=session_id)


@shared_task(name="harness.sweep", ignore_result=True)
def sweep() -> None:
    for session_id in services.sessions_sweep():
        session_kick(session_id)
