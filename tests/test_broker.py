"""The embedded broker (galley/broker.py): a put wakes an idle consumer at once (no polling), an
unreadable message file is quarantined and the next message still arrives."""

import threading
import time
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Queue

from galley.broker import register

register()

SAFETY_POLL = 60.0  # far longer than the test waits: a delivery can only come from a wake-up


def _connection(base: Path) -> Connection:
    for sub in ("queue", "processed"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    return Connection(
        "galleyfs://",
        transport_options={
            "data_folder_in": str(base / "queue"),
            "data_folder_out": str(base / "queue"),
            "processed_folder": str(base / "processed"),
            "store_processed": False,
            "polling_interval": SAFETY_POLL,
            "control_folder": str(base / "control"),
        },
    )


def _queue(base: Path) -> Queue:
    # kombu keeps declared exchanges per process: a name per test keeps each test's bindings its own.
    name = "jobs" + base.name.replace("_", "").replace("-", "")[-12:]
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def _consume(base: Path, got: list[Any], ready: threading.Event, count: int) -> None:
    queue = _queue(base)
    with _connection(base) as conn:
        with conn.Consumer(queue, callbacks=[lambda body, message: (got.append(body), message.ack())]):
            ready.set()
            deadline = time.monotonic() + 20
            while len(got) < count and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=20)
                except TimeoutError:
                    break


def _publish(base: Path, body: Any) -> None:
    queue = _queue(base)
    with _connection(base) as conn:
        conn.Producer().publish(body, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue])


def _start_consumer(base: Path, got: list[Any], count: int) -> threading.Thread:
    ready = threading.Event()
    thread = threading.Thread(target=_consume, args=(base, got, ready, count), daemon=True)
    thread.start()
    assert ready.wait(10)
    deadline = time.monotonic() + 10  # the consumer registers its wake-up socket on its first wait
    while not any((base / "wake").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # it is now waiting (on the socket, for up to SAFETY_POLL)
    return thread


def test_a_put_wakes_an_idle_consumer_instead_of_waiting_for_the_poll(tmp_path: Path) -> None:
    _publish(tmp_path, {"warm": True})  # declares the queue's binding
    got: list[Any] = []
    thread = _start_consumer(tmp_path, got, count=2)
    _publish(tmp_path, {"n": 1})
    thread.join(timeout=15)
    assert got == [{"warm": True}, {"n": 1}]
    assert not thread.is_alive()


def test_an_unreadable_message_is_quarantined_and_the_next_one_delivered(tmp_path: Path, caplog: Any) -> None:
    _publish(tmp_path, {"warm": True})
    got: list[Any] = []
    thread = _start_consumer(tmp_path, got, count=2)
    queue_dir = tmp_path / "queue"
    name = _queue(tmp_path).name
    (queue_dir / f"0_a-truncated.{name}.msg").write_bytes(b'{"body": "trunc')
    (queue_dir / f"0_b-not-an-object.{name}.msg").write_bytes(b"[1, 2]")
    _publish(tmp_path, {"n": 2})
    thread.join(timeout=15)
    assert got == [{"warm": True}, {"n": 2}]
    quarantined = sorted(p.name for p in (tmp_path / "quarantine").iterdir())
    assert quarantined == [f"0_a-truncated.{name}.msg", f"0_b-not-an-object.{name}.msg"]
    assert f"0_a-truncated.{name}.msg cannot be read" in caplog.text
