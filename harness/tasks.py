from celery import shared_task

from harness import services, threads
from harness.dispatch import session_kick, thread_kick


@shared_task(name="harness.run_session_step", acks_late=True)
def run_session_step(session_id: str) -> None:
    services.session_step(session_id=session_id)


@shared_task(name="harness.run_thread_step", acks_late=True)
def run_thread_step(session_id: str, thread_id: str) -> None:
    threads.thread_step(session_id=session_id, thread_id=thread_id)


@shared_task(name="harness.sweep", ignore_result=True)
def sweep() -> None:
    for session_id in services.sessions_sweep():
        session_kick(session_id)
    for session_id, thread_id in threads.threads_sweep():
        thread_kick(session_id, thread_id)
