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
_RECHECK_SECONDS = 0.5  # the answer wait re-reads the log this often even without a push
_CANCEL_SLICE = 0.05  # ... and looks at the interrupt flag this often


def runs_on_worker(event: Any) -> bool:
    """An `agent.tool_use` of a self_hosted session that the user's worker runs and answers."""
    return event.type == "agent.tool_use" and event.payload.get("name") in WORKER_TOOLS


def session_is_remote(session_id: str) -> bool:
    """For callers without the session row at hand (a child thread's step, the memory mounts);
    the session's own step reads this with its row."""
    return Session.objects.filter(pk=session_id, environment__config__type="self_hosted").exists()


def remote_wait(session_id: str) -> None:
    """The session waits on its worker: enqueue a work item if none is live (the worker left, or
    its lease was lost and the item already stopped). Runs with the session row locked, once per
    remote call: one query while the worker is there."""
    if services.work_live(session_id=session_id):
        return
    environment = Environment.objects.get(sessions__pk=session_id)
    services.work_ensure(environment=environment, session_id=session_id)


def worker_answer_wait(session_id: str, *, after: int, cancel: threading.Event) -> bool:
    """Wait (holding the step's lease) up to GALLEY_WORKER_ANSWER_WAIT_SECONDS for anything in the
    session's log past seq `after` (what the step has read). True when something arrived. Woken by
    the append's push (Redis pub/sub, or the embedded local bus), with a re-read every
    _RECHECK_SECONDS in case a push is lost; an interrupt is noticed within _CANCEL_SLICE. An answer
    that lands just after this gives up is picked up by the kick its send enqueued, or at the
    latest by the sweeper (the session stays running with a free lease)."""
    from sessions import streaming
    from sessions.models import Event

    def arrived() -> bool:
        return Event.objects.filter(session_id=session_id, seq__gt=after).exists()

    deadline = time.monotonic() + settings.GALLEY_WORKER_ANSWER_WAIT_SECONDS
    with streaming.wakeups(session_id) as wake:
        # Subscribed first, then read: an answer appended after this read wakes the wait below.
        if arrived():
            return True
        recheck = time.monotonic() + _RECHECK_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            woke = wake.wait(min(_CANCEL_SLICE, remaining))
            if cancel.is_set():
                return True  # an interrupt: the next move takes it
            if woke or time.monotonic() >= recheck:
                if arrived():
                    return True
                recheck = time.monotonic() + _RECHECK_SECONDS
    return False
