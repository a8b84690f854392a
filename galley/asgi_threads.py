"""Django's ASGI handler with its request threads kept, not started and joined per request.

Django runs each request's sync code (middleware, views, the ORM) on a thread of its own, made for
the request by asgiref's `ThreadSensitiveContext` and shut down, through one more thread that joins
it, when the request ends. On this hardware that costs several milliseconds a request (two thread
starts, each waiting for the interpreter), more than the view itself, and every request opens its
database connection afresh on its new thread. Here a request borrows a single-thread executor from
a pool and gives it back: each executor's thread keeps its own database connection between
requests, requests still run concurrently (an empty pool makes another executor), and the pool
keeps at most `KEEP` idle executors, closing the database connections of any it lets go.

The middleware chain and the view also run as one sync call on that thread. Django's async mode
would run each `MiddlewareMixin` hook through its own `sync_to_async` (two thread hand-offs per
middleware, a dozen per request); an async view (a long poll) runs on the event loop while the
request's thread waits for it.

A streaming response (an SSE stream, held open for as long as the client listens) gives its thread's
pooled PostgreSQL connections back as soon as the view has returned: Django closes them only when
the response ends, so 16 idle streams per web process would otherwise hold its whole pool, and
every other request would wait for a connection. The stream's own reads borrow one each time."""

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.db import connections

KEEP = 16


class _Executors:
    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.idle: list[ThreadPoolExecutor] = []
        self.lock = threading.Lock()

    def borrow(self) -> ThreadPoolExecutor:
        with self.lock:
            if self.idle:
                return self.idle.pop()  # the most recently used: its thread and connection are warm
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        with self.lock:
            if len(self.idle) < self.keep:
                self.idle.append(executor)
                return
        executor.submit(connections.close_all)
        executor.shutdown(wait=False)


def _release_pooled_connections() -> None:
    """Hand this thread's pooled database connections back (SQLite's thread connection is kept)."""
    for connection in connections.all(initialized_only=True):
        if getattr(connection, "pool", None) is not None and not connection.in_atomic_block:
            connection.close()


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self, keep: int = KEEP) -> None:
        super().__init__()
        self.executors = _Executors(keep)

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        self._middleware_chain = sync_to_async(self._middleware_chain, thread_sensitive=True)

    async def run_get_response(self, request: Any) -> Any:
        response = await super().run_get_response(request)
        if response.streaming:
            await sync_to_async(_release_pooled_connections, thread_sensitive=True)()
        return response

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self.executors.borrow()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.executors.give_back(executor)
