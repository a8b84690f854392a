"""One background thread per worker process that serves every running step of that process, the
sessions' (primary threads') and the child threads': it renews their leases (one UPDATE per kind)
and watches for user.interrupt (one indexed query), cancelling the step's current model request or
tool when one arrives: any interrupt cancels the session's step, and an interrupt naming no thread
or naming a child thread cancels that child's step."""

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from harness.providers.base import CancelToken
from sessions.models import Event, Session, SessionThread

log = logging.getLogger(__name__)


@dataclass
class StepHandle:
    session_id: str
    owner: str
    thread_id: str | None = None  # a child thread's step; None for the session's (primary) step
    cancel: CancelToken = field(default_factory=CancelToken)

    def fresh_cancel(self) -> CancelToken:
        """A new token for the next model request or tool run."""
        self.cancel = CancelToken()
        return self.cancel


class Keeper:
    def __init__(self) -> None:
        self._steps: dict[str, StepHandle] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_renewal = 0.0

    def register(self, session_id: str, owner: str, thread_id: str | None = None) -> StepHandle:
        handle = StepHandle(session_id, owner, thread_id)
        with self._lock:
            self._steps[owner] = handle
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="harness-keeper", daemon=True)
                self._thread.start()
        return handle

    def active_steps(self) -> int:
        return len(self._steps)

    def unregister(self, handle: StepHandle) -> None:
        with self._lock:
            if self._steps.get(handle.owner) is handle:
                del self._steps[handle.owner]

    def _run(self) -> None:
        while True:
            time.sleep(settings.GALLEY_INTERRUPT_POLL_SECONDS)
            with self._lock:
                steps = dict(self._steps)
            if not steps:
                # Idle: hold no database connection (PostgreSQL counts them; tests drop databases).
                if connection.connection is not None:
                    connection.close()
                continue
            try:
                self._tick(steps)
            except Exception:
                log.warning("the harness keeper failed a round", exc_info=True)
                try:
                    close_old_connections()
                    connection.close()
                except Exception:
                    # The database is still unreachable: keep the thread alive for the next round,
                    # or every lease this process holds would lapse.
                    log.warning("the harness keeper could not reset its connection", exc_info=True)

    def _tick(self, steps: dict[str, StepHandle]) -> None:
        handles = list(steps.values())
        interrupts: dict[str, set[str]] = {}
        for session_id, target in Event.objects.filter(
            session_id__in={h.session_id for h in handles}, type="user.interrupt", processed_at=None
        ).values_list("session_id", "payload__session_thread_id"):
            interrupts.setdefault(session_id, set()).add(target or "")
        for handle in handles:
            targets = interrupts.get(handle.session_id)
            if targets is not None and (handle.thread_id is None or targets & {"", handle.thread_id}):
                handle.cancel.set()
        now = time.monotonic()
        lease = settings.GALLEY_LEASE_SECONDS
        if now - self._last_renewal >= lease / 3:
            self._last_renewal = now
            expires = timezone.now() + timedelta(seconds=lease)
            # Owners are unique per step, so this renews exactly the leases this process holds.
            sessions = [h.owner for h in handles if h.thread_id is None]
            threads = [h.owner for h in handles if h.thread_id is not None]
            if sessions:
                Session.objects.filter(lease_owner__in=sessions).update(lease_expires_at=expires)
            if threads:
                SessionThread.objects.filter(lease_owner__in=threads).update(lease_expires_at=expires)


keeper = Keeper()
