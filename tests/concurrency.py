"""Run the same call in two threads released together, collecting results or ApiError statuses."""

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection

from api.errors import ApiError


def race(call: Callable[[], Any], *, threads: int = 2) -> list[Any]:
    barrier = threading.Barrier(threads)
    outcomes: list[Any] = []
    unexpected: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            outcomes.append(call())
        except ApiError as exc:
            outcomes.append(exc.status)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            unexpected.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    if unexpected:
        raise unexpected[0]
    return outcomes
