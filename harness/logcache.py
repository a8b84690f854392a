"""The primary-thread log a worker process has read, kept from one step of a session to the next.

The harness is stateless between steps: each step rebuilds the model's context from the session
log, and without this each step of a long session would read and decode the whole log again (the
larger part of a step's CPU after thirty turns). An event never changes once stored, except that
its `processed_at` goes from null to a time once, so what a step read up to the first event still
unprocessed is still true for any later step, in any process: a step starts from that prefix and
reads only what follows it. Another worker's step of the same session changes nothing here: it can
only append events and mark unprocessed ones, and both are read again. With the events goes the
model's context built from them (harness/context.py, ContextCache), so a step folds only the new
events into it instead of rebuilding it from the whole log.

The cache is per process, least recently used first out, and bounded by the size of the events'
payloads (`GALLEY_HARNESS_LOG_CACHE_BYTES`, 0 turns it off)."""

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

from django.conf import settings

from harness.context import ContextCache
from sessions.models import Event


@dataclass
class _Entry:
    last_seq: int
    events: list[Event]
    size: int
    context: ContextCache | None


_entries: "OrderedDict[str, _Entry]" = OrderedDict()
_lock = threading.Lock()
_total = 0


def _size(event: Event) -> int:
    return len(json.dumps(event.payload, separators=(",", ":"), default=str)) + 200


def take(session_id: str) -> tuple[int, list[Event], ContextCache | None]:
    """The seq read up to, the primary-thread events up to it (a copy of the list) and the context
    built from them (a copy a step may extend), or (0, [], None)."""
    with _lock:
        entry = _entries.get(session_id)
        if entry is None:
            return 0, [], None
        _entries.move_to_end(session_id)
        # A step extends its context cache in place; another may take this entry.
        context = entry.context.copy() if entry.context is not None else None
        return entry.last_seq, list(entry.events), context


def keep(session_id: str, last_seq: int, events: list[Event], context: ContextCache | None = None) -> None:
    """Keeps what a step that ended normally read: the events before the first one still
    unprocessed (those may yet be marked, by any process), the seq just before it, and the context
    built from them when it covers no more than those events."""
    global _total
    limit = settings.GALLEY_HARNESS_LOG_CACHE_BYTES
    if limit <= 0:
        return
    cut = next((i for i, e in enumerate(events) if e.processed_at is None), None)
    if cut is not None:
        last_seq = events[cut].seq - 1
        events = events[:cut]
    if context is not None and not context.fits(events, context.summary_seq):
        context = None
    with _lock:
        old = _entries.pop(session_id, None)
        size, counted = 0, 0
        if old is not None:
            _total -= old.size
            n = len(old.events)
            if n and len(events) >= n and events[n - 1] is old.events[-1]:
                size, counted = old.size, n  # the step started from it: count only what it added
        size += sum(_size(e) for e in events[counted:])
        if size > limit:
            return
        _entries[session_id] = _Entry(last_seq, events, size, context)
        _total += size
        while _total > limit and _entries:
            _, dropped = _entries.popitem(last=False)
            _total -= dropped.size


def clear() -> None:
    global _total
    with _lock:
        _entries.clear()
        _total = 0
