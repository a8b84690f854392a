"""The trace as a tree: turns → model requests → tool calls, per thread, each node with its duration,
tokens and cost, rolled up per turn, per thread and per session. Time a tool call spent waiting for a
person (an approval, a custom tool's answer) is kept apart from the time it ran.

Built from the log alone (`Event` rows in seq order), so it is exact for any session and any worker."""

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from django.core.cache import cache
from django.db import connection
from django.db.models import Case, F, Func, JSONField, When

from console.timeline import (
    TOKEN_KEYS,
    content_text,
    money,
    one_line,
    step_cost_micros,
    tool_summary,
    trace_references,
    trace_row_values,
)
from sessions.models import Event, Session

TRACE_CACHE_SECONDS = 600
DELTA_CACHE_SECONDS = 120  # a second page at the same position, polling every 2 s
INPUT_TYPES = ("user.message", "system.message", "user.define_outcome", "agent.thread_message_received")
TOOL_USES = ("agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use")
TOOL_RESULTS = ("agent.tool_result", "agent.mcp_tool_result", "user.custom_tool_result", "user.tool_result")
# What moves the tree; any other event (a status, a thinking block) only extends its turn.
OBSERVED_TYPES = frozenset(
    (*INPUT_TYPES, *TOOL_USES, *TOOL_RESULTS, "span.model_request_start", "span.model_request_end")
    + ("agent.message", "user.tool_confirmation")
)


class LogEvent(NamedTuple):
    """The columns of an `Event` the trace reads: ten thousand of these cost half of as many model
    instances."""

    id: str
    seq: int
    type: str
    thread_id: str | None
    created_at: datetime
    payload: dict[str, Any]


class WithoutContent(Func):
    """A payload without its `content` key, dropped in the database: a tool's output is most of a
    long log's bytes, and the trace reads none of it."""

    output_field = JSONField()

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="JSON_REMOVE(%(expressions)s, '$.content')")

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="(%(expressions)s - 'content')")

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> Any:  # type: ignore[override]
        return super().as_sql(compiler, connection, **({"template": "%(expressions)s"} | extra))


def trace_events(session: Session, *, after: int = 0) -> list[LogEvent]:
    """The session's log (after `after`) in seq order, as the trace reads it.

    Read through a plain cursor, and the payloads decoded as one JSON array: the ORM's per-value
    converters and a `json.loads` per event cost more than the decoding itself."""
    qs = (
        Event.objects.filter(session=session, seq__gt=after)
        .order_by("seq")
        .annotate(
            body=Case(When(type__in=TOOL_RESULTS, then=WithoutContent("payload")), default=F("payload"))
        )
        .values_list("id", "seq", "type", "thread_id", "created_at", "body")
    )
    sql, params = qs.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:
        return []
    # Both drivers give JSON as text (Django has psycopg load jsonb as text, for JSONField to
    # decode); SQLite's gives naive UTC datetimes, psycopg aware ones.
    payloads = json.loads("[" + ",".join([row[5] for row in rows]) + "]")
    utc = UTC
    return [
        LogEvent(id, seq, type_, thread_id, at if at.tzinfo is not None else at.replace(tzinfo=utc), payload)
        for (id, seq, type_, thread_id, at, _), payload in zip(rows, payloads, strict=True)
    ]


def _ms(a: datetime, b: datetime) -> int:
    return max(0, round((b - a).total_seconds() * 1000))


@dataclass
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_micros: int = 0
    model_requests: int = 0
    tool_calls: int = 0
    wait_ms: int = 0

    def add(self, other: "Totals") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["cost"] = money(self.cost_micros)
        return out

    def compact(self) -> list[Any]:
        return [getattr(self, name) for name in self.__dataclass_fields__] + [money(self.cost_micros)]


@dataclass
class Node:
    kind: str  # "model" or "tool"
    seq: int
    start: datetime
    end: datetime | None = None
    name: str = ""
    summary: str = ""
    is_error: bool = False
    wait_ms: int = 0  # a person's time (approval, custom tool answer), not the tool's
    tokens: dict[str, int] = field(default_factory=dict)
    cost_micros: int = 0
    text: str = ""  # what the model said in this request
    children: list["Node"] = field(default_factory=list)
    end_seq: int | None = None

    def wire(self) -> dict[str, Any]:
        duration = _ms(self.start, self.end) if self.end else None
        out: dict[str, Any] = {
            "kind": self.kind,
            "seq": self.seq,
            "end_seq": self.end_seq,
            "start": self.start.isoformat(),
            "end": self.end.isoformat() if self.end else None,
            "duration_ms": duration,
            "name": self.name,
            "summary": self.summary,
            "is_error": self.is_error,
        }
        if self.kind == "model":
            out |= {"tokens": self.tokens, "cost": money(self.cost_micros), "text": self.text}
            out["children"] = [child.wire() for child in self.children]
        else:
            out["wait_ms"] = self.wait_ms
            out["run_ms"] = None if duration is None else max(0, duration - self.wait_ms)
        return out

    def compact(self, origin: datetime) -> list[Any]:
        model = self.kind == "model"
        return [
            self.kind,
            self.seq,
            self.end_seq,
            _ms(origin, self.start),
            _ms(self.start, self.end) if self.end else None,
            self.name,
            self.summary,
            int(self.is_error),
            self.wait_ms,
            [self.tokens.get(key, 0) for key in TOKEN_KEYS] if model else None,
            money(self.cost_micros) if model else None,
            self.text,
            [child.compact(origin) for child in self.children],
        ]


@dataclass
class Turn:
    index: int
    seq: int
    start: datetime
    title: str
    end: datetime | None = None
    nodes: list[Node] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    last_seq: int = 0  # the newest event that changed this turn: a live page redraws only those

    def wire(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seq": self.seq,
            "title": self.title,
            "start": self.start.isoformat(),
            "end": (self.end or self.start).isoformat(),
            "duration_ms": _ms(self.start, self.end or self.start),
            "totals": self.totals.wire(),
            "nodes": [node.wire() for node in self.nodes],
        }

    def compact(self, origin: datetime) -> list[Any]:
        return [
            self.index,
            self.seq,
            self.title,
            _ms(origin, self.start),
            _ms(self.start, self.end or self.start),
            self.totals.compact(),
            [node.compact(origin) for node in self.nodes],
        ]


@dataclass
class Lane:
    id: str
    name: str
    turns: list[Turn] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    # Open work, by the id of the event that started it, with the turn that holds it.
    models: dict[str, tuple[Node, Turn]] = field(default_factory=dict)
    tools: dict[str, tuple[Node, Turn]] = field(default_factory=dict)
    current: Node | None = None  # the model request whose answer is being recorded
    priced: dict[str, int] = field(default_factory=dict)  # this read's model request costs, by end event id

    def turn(self, event: Event | LogEvent) -> Turn:
        if not self.turns:
            self.turns.append(
                Turn(index=0, seq=event.seq, start=event.created_at, title="Before the first message")
            )
        return self.turns[-1]


def _trace_lanes(
    session: Session, events: Sequence[Event | LogEvent], lanes: dict[str, Lane] | None = None
) -> tuple[list[Lane], Totals]:
    """The log read into lanes of turns and nodes, with the roll-ups of each level; with `lanes`
    (what an earlier read left, `TraceState`), only the events after it are read into them."""
    model_id = str((session.agent_snapshot or {}).get("model", {}).get("id", ""))
    names = dict(session.threads.values_list("id", "agent_name")) if events else {}
    lanes = {} if lanes is None else lanes
    lane: Lane | None = None
    for event in events:
        lane_id = event.thread_id or "main"
        if lane is None or lane.id != lane_id:
            lane = lanes.get(lane_id)
            if lane is None:
                name = "Main thread" if lane_id == "main" else f"{names.get(lane_id) or 'Sub-agent'}"
                lane = lanes[lane_id] = Lane(id=lane_id, name=name)
        if event.type in OBSERVED_TYPES:
            _observe(lane, event, model_id)
        turn = lane.turn(event)
        turn.end = event.created_at
        turn.last_seq = event.seq
    session_totals = Totals()
    for lane in lanes.values():
        lane.totals = Totals()
        for turn in lane.turns:
            lane.totals.add(turn.totals)
        session_totals.add(lane.totals)
    return list(lanes.values()), session_totals


@dataclass
class TraceState:
    """What reading the log up to `last_seq` left: enough to read only the events after it. Kept in
    this process for a running session, whose page asks every 2 s for what is new."""

    last_seq: int
    start: datetime
    end: datetime
    lanes: dict[str, Lane]


LIVE = ("running", "rescheduling")
STATES_KEPT_EVENTS = 200_000  # about 45 MB of states at the most (a 10,000-event one holds 2.2 MB)


class TraceStates:
    """The newest trace state of each running session this process has read, least recently used
    first out. Kept as objects, not in the cache: pickling a 10,000-event state in and out took
    30 ms of a 40 ms poll. A poll that lands on another process (several web processes) finds no
    state there, or an older one: it reads the log after what that process has."""

    def __init__(self, kept_events: int) -> None:
        self.kept_events = kept_events
        self.states: OrderedDict[str, TraceState] = OrderedDict()
        self.events = 0
        self.lock = threading.Lock()

    def take(self, session_id: str) -> TraceState | None:
        """The session's state, taken out: the reader advances it in place and puts it back, and a
        second poll at the same moment reads the whole log rather than a state half advanced."""
        with self.lock:
            state = self.states.pop(session_id, None)
            self.events -= state.last_seq if state else 0
            return state

    def put(self, session_id: str, state: TraceState) -> None:
        with self.lock:
            kept = self.states.pop(session_id, None)
            self.events -= kept.last_seq if kept else 0
            if kept is not None and kept.last_seq > state.last_seq:
                state = kept  # a concurrent reader's is newer
            self.states[session_id] = state
            self.events += state.last_seq
            while self.events > self.kept_events and len(self.states) > 1:
                _, oldest = self.states.popitem(last=False)
                self.events -= oldest.last_seq


trace_states = TraceStates(STATES_KEPT_EVENTS)


def _span(session: Session, events: Sequence[Event | LogEvent]) -> tuple[datetime, datetime]:
    if not events:
        return session.created_at, session.created_at
    return events[0].created_at, events[-1].created_at


def trace_tree(session: Session, events: Sequence[Event | LogEvent]) -> dict[str, Any]:
    """The tree for the session's whole log (events in seq order)."""
    lanes, session_totals = _trace_lanes(session, events)
    start, end = _span(session, events)
    return {
        "session_id": session.pk,
        "status": session.status,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "duration_ms": _ms(start, end),
        "last_seq": events[-1].seq if events else 0,
        "totals": session_totals.wire(),
        "lanes": [
            {
                "id": lane.id,
                "name": lane.name,
                "totals": lane.totals.wire(),
                "turns": [_with_markdown(turn.wire()) for turn in lane.turns],
            }
            for lane in lanes
        ],
    }


# The console's compact trace (`trace_view`): positional arrays, times in ms from the first event.
TOTALS_FIELDS = (*TOKEN_KEYS, "cost_micros", "model_requests", "tool_calls", "wait_ms", "cost")
TURN_FIELDS = ("index", "seq", "title", "at_ms", "duration_ms", "totals", "nodes")
NODE_FIELDS = (
    "kind", "seq", "end_seq", "at_ms", "duration_ms", "name", "summary", "is_error",
    "wait_ms", "tokens", "cost", "text", "children",
)  # fmt: skip
ROW_FIELDS = (
    "seq", "kind", "lane", "type", "at_ms", "summary", "latency_ms", "duration_ms", "tokens", "cost",
)  # fmt: skip


def trace_view(session: Session, events: Sequence[Event | LogEvent]) -> dict[str, Any]:
    """Everything the trace page shows, from one read of the log: the tree with its roll-ups and
    the replay's rows, as positional arrays (the `*_FIELDS` name their columns; a node's tokens
    follow TOKEN_KEYS, the replay's kinds, lanes and types are indexes into their lists). Turn
    markdown and each event's JSON are left out: the page fetches them when they are asked for."""
    return _view(session, events)[0]


def _view(
    session: Session, events: Sequence[Event | LogEvent], state: TraceState | None = None, after: int = 0
) -> tuple[dict[str, Any], TraceState | None]:
    """The view of `events` (the log after `min(after, state.last_seq)`; all of it without a state):
    with a state, a delta that holds the turns changed after `after` and the replay rows after it."""
    if state is None:
        lanes, session_totals = _trace_lanes(session, events)
        start, end = _span(session, events)
        row_events = events
    else:
        known = state.last_seq
        lanes, session_totals = _trace_lanes(session, [e for e in events if e.seq > known], state.lanes)
        start, end = state.start, events[-1].created_at if events else state.end
        row_events = [e for e in events if e.seq > after] if known < after else events
    last_seq = events[-1].seq if events else (state.last_seq if state else 0)
    earlier: dict[str, Any] | None = None
    if state is not None and row_events:
        # Latencies and durations of the new rows point back at starts read before.
        refs = trace_references(row_events)  # type: ignore[arg-type]
        earlier = {e.id: e for e in Event.objects.filter(session=session, id__in=refs)} if refs else None
    costs: dict[str, int] = {}  # priced once, for the tree and the rows
    for lane in lanes:
        costs |= lane.priced
        lane.priced.clear()  # the rows below are its only reader; a kept state carries none
    kinds: dict[str, int] = {}
    lane_ids: dict[str, int] = {}
    types: dict[str, int] = {}
    rows = [
        [
            event.seq,
            kinds.setdefault(values.kind, len(kinds)),
            lane_ids.setdefault(event.thread_id or "main", len(lane_ids)),
            types.setdefault(event.type, len(types)),
            _ms(start, event.created_at),
            values.summary,
            values.latency_ms,
            values.duration_ms,
            values.tokens,
            values.cost,
        ]
        for event, values in zip(
            row_events, trace_row_values(session, row_events, earlier, costs=costs), strict=True
        )
    ]
    view: dict[str, Any] = {
        "session_id": session.pk,
        "status": session.status,
        "start": start.isoformat(),
        "duration_ms": _ms(start, end),
        "last_seq": last_seq,
        "fields": {
            "tokens": TOKEN_KEYS,
            "totals": TOTALS_FIELDS,
            "turn": TURN_FIELDS,
            "node": NODE_FIELDS,
            "row": ROW_FIELDS,
        },
        "totals": session_totals.compact(),
        "lanes": [
            {
                "id": lane.id,
                "name": lane.name,
                "totals": lane.totals.compact(),
                "turns": [turn.compact(start) for turn in lane.turns if turn.last_seq > after],
            }
            for lane in lanes
        ],
        "replay": {"kinds": list(kinds), "lanes": list(lane_ids), "types": list(types), "rows": rows},
    }
    if state is not None:
        view["after"] = after
    if not lanes:
        return view, None
    return view, TraceState(last_seq=last_seq, start=start, end=end, lanes={lane.id: lane for lane in lanes})


def trace_view_json(session: Session, *, after: int | None = None) -> bytes:
    """`trace_view` of the session's log as JSON, kept in the cache under the session's `last_seq`
    and status: the log only grows, and every append moves `last_seq`, so an entry is never stale.
    An ended session's trace is built once; a running one's when it has moved.

    With `after` (the `last_seq` the page has), a delta: the turns changed since and the new replay
    rows, read from the log after what the state this process kept for the session has; with no
    state here, the whole view (it has no `after`, and the page compares it turn by turn)."""
    key = f"galley:trace-view:{session.pk}:{session.last_seq}:{session.status}:{after or 0}"
    body = cache.get(key)
    if body is not None:
        return body
    state = trace_states.take(session.pk) if after else None
    if state is not None and max(state.last_seq, after or 0) > session.last_seq:
        state = None  # the log was cut back (as tests stage a crash), or the page knows a log we do not
    events = trace_events(session, after=min(state.last_seq, after or 0) if state else 0)
    view, new_state = _view(session, events, state, (after or 0) if state else 0)
    body = json.dumps(view, ensure_ascii=False, separators=(",", ":")).encode()
    cache.set(key, body, TRACE_CACHE_SECONDS if state is None else DELTA_CACHE_SECONDS)
    if new_state is not None and session.status in LIVE:
        trace_states.put(session.pk, new_state)
    return body


def _with_markdown(turn: dict[str, Any]) -> dict[str, Any]:
    turn["markdown"] = turn_markdown(turn)
    return turn


def _observe(lane: Lane, event: Event | LogEvent, model_id: str) -> None:
    p = event.payload
    t = event.type
    if t in INPUT_TYPES:
        index = len(lane.turns) + (0 if lane.turns and lane.turns[0].index == 0 else 1)  # turn 0 comes before
        title = one_line(content_text(p.get("content")) or p.get("description") or t, 100)
        lane.turns.append(Turn(index=index, seq=event.seq, start=event.created_at, title=title))
        return
    turn = lane.turn(event)
    if t == "span.model_request_start":
        node = Node(kind="model", seq=event.seq, start=event.created_at, name="Model request")
        lane.models[event.id] = (node, turn)
        lane.current = node
        turn.nodes.append(node)
        turn.totals.model_requests += 1
    elif t == "span.model_request_end":
        found = lane.models.pop(str(p.get("model_request_start_id")), None)
        if found is None:
            return
        node, found[1].last_seq = found[0], event.seq  # its turn changed, if it is an earlier one
        usage = p.get("model_usage") or {}
        node.end, node.end_seq, node.is_error = event.created_at, event.seq, bool(p.get("is_error"))
        node.tokens = {key: int(usage.get(key) or 0) for key in TOKEN_KEYS}
        node.cost_micros = lane.priced[event.id] = step_cost_micros(model_id, usage)
        for key in TOKEN_KEYS:
            setattr(turn.totals, key, getattr(turn.totals, key) + node.tokens[key])
        turn.totals.cost_micros += node.cost_micros
    elif t == "agent.message" and lane.current is not None:
        lane.current.text = (lane.current.text + "\n" + content_text(p.get("content"))).strip()
    elif t in TOOL_USES:
        name = str(p.get("name") or "tool")
        if t == "agent.mcp_tool_use":
            name = f"{p.get('mcp_server_name', 'mcp')}.{name}"
        node = Node(
            kind="tool",
            seq=event.seq,
            start=event.created_at,
            name=name,
            summary=tool_summary(p.get("input")),
        )
        lane.tools[event.id] = (node, turn)
        (lane.current.children if lane.current is not None else turn.nodes).append(node)
        turn.totals.tool_calls += 1
        if t == "agent.custom_tool_use":
            node.name = f"{name} (custom)"
    elif t == "user.tool_confirmation":
        held = lane.tools.get(str(p.get("tool_use_id")))
        if held is not None:
            node, held[1].last_seq = held[0], event.seq
            # From the call until the person decided: waiting, not running.
            node.wait_ms = _ms(node.start, event.created_at)
            turn.totals.wait_ms += node.wait_ms
            if p.get("result") == "deny":
                node.summary = (node.summary + " · denied").strip(" ·")
    elif t in TOOL_RESULTS:
        use_id = str(p.get("tool_use_id") or p.get("mcp_tool_use_id") or p.get("custom_tool_use_id") or "")
        held = lane.tools.pop(use_id, None)
        if held is None:
            return
        node, held[1].last_seq = held[0], event.seq
        node.end, node.end_seq, node.is_error = event.created_at, event.seq, bool(p.get("is_error"))
        if t == "user.custom_tool_result":  # a person (or their program) answered: all of it is waiting
            node.wait_ms = _ms(node.start, event.created_at)
            turn.totals.wait_ms += node.wait_ms


def trace_markdown(tree: dict[str, Any]) -> str:
    """The tree as markdown, for pasting into an issue or a chat."""
    lines = [
        f"# Trace of {tree['session_id']}",
        "",
        f"{_totals_line(tree['totals'])}, {tree['duration_ms'] / 1000:.1f} s",
    ]
    for lane in tree["lanes"]:
        lines += ["", f"## {lane['name']}", _totals_line(lane["totals"])]
        for turn in lane["turns"]:
            lines += ["", turn_markdown(turn)]
    return "\n".join(lines) + "\n"


def turn_markdown(turn: dict[str, Any]) -> str:
    out = [
        f"### Turn {turn['index']}: {turn['title']}",
        f"{_totals_line(turn['totals'])}, {turn['duration_ms']} ms",
    ]
    for node in turn["nodes"]:
        out += _node_markdown(node, "")
    return "\n".join(out)


def _node_markdown(node: dict[str, Any], indent: str) -> list[str]:
    if node["kind"] == "model":
        tokens = node.get("tokens") or {}
        line = (
            f"{indent}- Model request, {node['duration_ms'] or 0} ms, "
            f"{tokens.get('input_tokens', 0):,} in / {tokens.get('output_tokens', 0):,} out, {node['cost']}"
        )
        out = [line]
        if node.get("text"):
            out.append(f"{indent}  > {one_line(node['text'], 200)}")
        for child in node.get("children") or []:
            out += _node_markdown(child, indent + "  ")
        return out
    wait = f", waited {node['wait_ms']} ms for a person" if node.get("wait_ms") else ""
    error = " (error)" if node.get("is_error") else ""
    summary = f": `{node['summary']}`" if node.get("summary") else ""
    return [f"{indent}- {node['name']}{summary}{error}, ran {node.get('run_ms') or 0} ms{wait}"]


def _totals_line(totals: dict[str, Any]) -> str:
    return (
        f"{totals['model_requests']} model requests, {totals['tool_calls']} tool calls, "
        f"{totals['input_tokens']:,} in / {totals['output_tokens']:,} out tokens, {totals['cost']}"
    )
