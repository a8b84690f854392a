"""Live session pages: a websocket that streams a session's new events as rendered chat items.

The log is the truth (design.md, "Streaming"): the consumer reads events after the last seq the
page has, then waits for a wake-up hint from sessions.streaming (or the poll interval, since the
embedded default has no cross-process bus) and reads again. A lost hint costs latency only."""

import asyncio
import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.template.loader import render_to_string

from console.access import Access, access_for
from console.timeline import ChatContext, chat_item, pending_actions, session_cost, status_label, work_state
from sessions import streaming
from sessions.models import Event, Session, SessionThread

BATCH = 200


def _load_access(user: Any, session_id: str) -> tuple[Access, Session] | None:
    access = access_for(user)
    if access is None:
        return None
    session = Session.objects.filter(pk=session_id, workspace=access.workspace).first()
    return (access, session) if session is not None else None


def _read(
    access: Access, session_id: str, after: int, status: str | None, context: ChatContext | None = None
) -> tuple[list[dict[str, Any]], int, str]:
    """Messages for events after `after`, plus a status/actions message when the status changed.
    `context` carries what earlier reads saw (decisions, interrupts) from one read to the next."""
    context = context if context is not None else ChatContext()
    session = Session.objects.filter(pk=session_id).first()
    if session is None:
        return [{"gone": True}], after, status or ""
    events = list(Event.objects.filter(session_id=session_id, seq__gt=after).order_by("seq")[:BATCH])
    out: list[dict[str, Any]] = []
    if events:
        context.threads.update(
            SessionThread.objects.filter(session_id=session_id).values_list("id", "agent_name")
        )
    for event in events:
        item = chat_item(event, context=context)
        html = render_to_string("console/_chat_item.html", {"item": item}) if item else ""
        message: dict[str, Any] = {"seq": event.seq, "id": event.id, "type": event.type, "html": html}
        if item and item.get("decides"):
            message["decided"] = {"tool_use_id": item["decides"], "label": item["decision"]}
        out.append(message)
    last = events[-1].seq if events else after
    state = f"{session.status}:{json.dumps(session.stop_reason, sort_keys=True)}"
    if state != status or events:
        actions_html = render_to_string(
            "console/_actions.html",
            {"actions": pending_actions(session), "session": session, "access": access},
        )
        cost = session_cost(session)
        usage = f"{session.input_tokens} in / {session.output_tokens} out tokens · cost {cost}"
        out.append(
            {
                "status": session.status,
                "status_label": status_label(session),
                "working": work_state(session),
                "actions_html": actions_html,
                "usage": usage,
            }
        )
    return out, last, state


def preview_message(frame: dict[str, Any]) -> dict[str, Any] | None:
    """A typing preview for the page from a harness preview frame (agent text only)."""
    if frame.get("type") == "event_start" and (frame.get("event") or {}).get("type") == "agent.message":
        return {"preview": {"id": frame["event"].get("id"), "text": ""}}
    if frame.get("type") == "event_delta":
        content = (frame.get("delta") or {}).get("content") or {}
        if content.get("type") == "text" and content.get("text"):
            return {"preview": {"id": frame.get("event_id"), "text": content["text"]}}
    return None


class SessionConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.session_id = str(self.scope["url_route"]["kwargs"]["session_id"])
        found = await database_sync_to_async(_load_access)(self.scope.get("user"), self.session_id)
        if found is None:
            await self.close(code=4403)
            return
        self.access = found[0]
        query = dict(
            part.split("=", 1)
            for part in self.scope.get("query_string", b"").decode().split("&")
            if "=" in part
        )
        after = query.get("after", "0")
        self.after = int(after) if after.isdigit() else 0
        await self.accept()
        self.task = asyncio.create_task(self._stream())

    async def disconnect(self, code: int) -> None:
        task = getattr(self, "task", None)
        if task is not None:
            task.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Actions go through the page's forms (one validation path); the socket only pushes.
        return

    async def _stream(self) -> None:
        status: str | None = None
        context = ChatContext()
        read = database_sync_to_async(_read)
        async with streaming.subscribe(self.session_id) as subscription:
            while True:
                messages, self.after, new_status = await read(
                    self.access, self.session_id, self.after, status, context
                )
                status = new_status
                for message in messages:
                    await self.send(text_data=json.dumps(message))
                    if message.get("gone"):
                        await self.close(code=4404)  # the session was deleted
                        return
                if messages and any("seq" in m for m in messages):
                    continue  # more may be waiting beyond this batch
                # A hint (Redis or the embedded local bus) usually wakes us; the periodic read also
                # catches a lost hint and row changes that append no event (a deleted session).
                # Pages are few (people, not programs): a 1 s re-read at most, also for deletions.
                wait = min(max(settings.GALLEY_SSE_POLL_SECONDS, 0.25), 1.0)
                hint = await subscription.get(timeout=wait)
                # Typing previews are passed straight through; they never touch the database.
                while hint is not None and hint.get("kind") == "preview":
                    preview = preview_message(hint.get("frame") or {})
                    if preview is not None:
                        await self.send(text_data=json.dumps(preview))
                    hint = await subscription.get(timeout=wait)
