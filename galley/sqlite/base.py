"""Django's SQLite backend with one fair write lock across the processes of an install.

SQLite's own busy handler retries a locked database by sleeping and polling, so under many
concurrent writers (several web processes and the worker's threads) a waiting writer can lose every
retry for longer than its busy timeout and fail with "database is locked" (a 500). Here every write
transaction (`BEGIN IMMEDIATE`, what `atomic()` starts) first takes an exclusive `flock` on
`<database>.writelock`: a waiter sleeps in the kernel and is woken when the holder commits, so
writers take turns instead of polling. Single autocommit statements keep SQLite's busy handler (they
hold the lock for one statement)."""

import fcntl
import os
from typing import Any

from django.db.backends.sqlite3 import base


class DatabaseWrapper(base.DatabaseWrapper):
    _write_lock_fd: int | None = None

    def _lock_path(self) -> str | None:
        name = str(self.settings_dict.get("NAME") or "")
        if not name or name == ":memory:" or name.startswith("file:"):
            return None
        return name + ".writelock"

    def _start_transaction_under_autocommit(self) -> None:
        path = self._lock_path()
        if path is not None and self._write_lock_fd is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._write_lock_fd = fd
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_write_lock()
            raise

    def _release_write_lock(self) -> None:
        fd = self._write_lock_fd
        if fd is not None:
            self._write_lock_fd = None
            os.close(fd)  # closing the descriptor releases the flock

    def _commit(self) -> Any:
        try:
            return super()._commit()
        finally:
            self._release_write_lock()

    def _rollback(self) -> Any:
        try:
            return super()._rollback()
        finally:
            self._release_write_lock()

    def _close(self) -> Any:
        try:
            return super()._close()
        finally:
            self._release_write_lock()
