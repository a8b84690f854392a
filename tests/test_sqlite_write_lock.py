"""On SQLite, write transactions take turns through one flock (galley/sqlite/base.py): a writer
that waits longer than SQLite's busy timeout still gets its turn instead of "database is locked",
whichever thread or process holds the lock."""

import threading
import time
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from galley.sqlite.base import DatabaseWrapper

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.IS_SQLITE, reason="the SQLite backend's write lock"),
]

BUSY_TIMEOUT = 0.2  # seconds SQLite's own busy handler would wait before "database is locked"
HOLD = 0.8  # seconds the first writer keeps its transaction open


def _wrapper(alias: str) -> DatabaseWrapper:
    options = {**connection.settings_dict["OPTIONS"], "timeout": BUSY_TIMEOUT}
    db = DatabaseWrapper({**connection.settings_dict, "OPTIONS": options}, alias=alias)
    db.ensure_connection()
    return db


def test_a_writer_waits_its_turn_past_the_busy_timeout() -> None:
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS write_lock_probe (who text)")
    holding = threading.Event()
    outcome: dict[str, Any] = {}

    def second_writer() -> None:
        db = _wrapper("second")
        holding.wait(10)
        started = time.monotonic()
        try:
            db._start_transaction_under_autocommit()
            db.cursor().execute("INSERT INTO write_lock_probe VALUES ('second')")
            db.commit()
            outcome["waited"] = time.monotonic() - started
        except Exception as exc:
            outcome["error"] = exc
        finally:
            db.close()

    thread = threading.Thread(target=second_writer)
    thread.start()
    first = _wrapper("first")
    first._start_transaction_under_autocommit()
    first.cursor().execute("INSERT INTO write_lock_probe VALUES ('first')")
    holding.set()
    time.sleep(HOLD)
    first.commit()
    first.close()
    thread.join(20)
    assert "error" not in outcome, outcome
    assert outcome["waited"] > BUSY_TIMEOUT  # it really waited for the first writer, and succeeded
    with connection.cursor() as cursor:
        cursor.execute("SELECT who FROM write_lock_probe ORDER BY rowid")
        assert [row[0] for row in cursor.fetchall()] == ["first", "second"]


def test_a_failed_begin_or_rollback_releases_the_lock() -> None:
    db = _wrapper("one")
    db._start_transaction_under_autocommit()
    db.rollback()
    assert db._write_lock_fd is None
    other = _wrapper("two")
    other._start_transaction_under_autocommit()  # would block forever if the lock were kept
    other.commit()
    db.close()
    other.close()
