"""The one door into the harness: called (after commit) whenever a session has new work."""


def session_kick(session_id: str) -> None:
    """Enqueue a harness step for the session. Safe to call twice: a step claims a lease first."""
    from harness.tasks import run_session_step

    run_session_step.delay(session_id)


def thread_kick(session_id: str, thread_id: str) -> None:
    """Enqueue a step of a coordinator's child thread. Safe to call twice: it claims the thread's lease."""
    from harness.tasks import run_thread_step

    run_thread_step.delay(session_id, thread_id)
