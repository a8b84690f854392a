"""The one door into the harness: called (after commit) whenever a session has new work."""


def session_kick(session_id: str) -> None:
    """Enqueue a harness step for the session. Safe to call twice: a step claims a lease first."""
    from harness.tasks import run_session_step

    run_session_step.delay(session_id)
