"""What the harness asks about self_hosted sessions. Their built-in tools run on the user's
worker: the harness records `agent.tool_use`, keeps the session running, and waits for the
worker's `user.tool_result`; this module makes sure a worker is on its way."""

import threading
import time
from typing import Any

from django.conf import settings

from agents.models import Environment
from selfhosted import services
from sessions.models import Session

# The agent toolset's sandbox tools. web_fetch and web_search have no sandbox: the harness runs
# them with its own domain rules, for self_hosted sessions too (the SDK worker has no such tools).
WORKER_TOOLS = frozenset({"bash", "read", "write", "edit", "glob", "grep"})


def runs_on_worker(event: Any) -> bool:
    """An `agent.tool_use` of a self_hosted session that the user's worker runs and answers."""
    return event.type == "agent.tool_use" and event.payload.get("name") in WORKER_TOOLS


def session_is_remote(session_id: str) -> bool:
    """For callers without the session row at hand (a child thread's step, the memory mounts);
    the session's own step reads this with its row."""
    return Session.objects.filter(pk=session_id, environment__config__type="self_hosted").exists()


def remote_wait(session_id: str) -> None:
    """The session waits on its worker: enqueue a work item if none is live (the worker left, or
    its lease was lost and the item already stopped). Runs with the session row locked."""
    environment_id = Session.objects.values_list("environment_id", flat=True).get(pk=session_id)
    environment = Environment.objects.get(pk=environment_id)
    services.work_ensure(environment=environment, session_id=session_id)


def worker_answer_wait(session_id: str, *, cancel: threading.Event) -> bool:
    """Wait (holding the step's lease) up to GALLEY_WORKER_ANSWER_WAIT_SECONDS for anything new in
    the session's log, polling with a growing interval. True when something arrived. An answer
    that lands just after this gives up is picked up by the kick its send enqueued, or at the
    latest by the sweeper (the session stays running with a free lease)."""
    from sessions.models import Event

    seen = Session.objects.values_list("last_seq", flat=True).get(pk=session_id)
    started = time.monotonic()
    deadline = started + settings.GALLEY_WORKER_ANSWER_WAIT_SECONDS
    while time.monotonic() < deadline:
        # One indexed read every 5 ms while a quick tool is likely to answer, then every 50 ms.
        interval = 0.005 if time.monotonic() - started < 1.0 else 0.05
        if cancel.wait(interval):
            return True  # an interrupt: the next move takes it
        if Event.objects.filter(session_id=session_id, seq__gt=seen).exists():
            return True
    return False
