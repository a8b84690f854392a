"""A real Celery worker process (threads pool, embedded beat) on the test database, for harness
tests that need the production path: tasks through the broker, the sweeper, crashes."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

from galley.celery import worker_argv

ROOT = Path(__file__).resolve().parent.parent


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db.get("USER") or "postgres"
    if db.get("PASSWORD"):
        auth += f":{db['PASSWORD']}"
    return f"postgres://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def purge_embedded_broker() -> None:
    if settings.REDIS_URL:
        return
    queue = Path(str(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]))
    for item in queue.glob("*"):
        item.unlink(missing_ok=True)


class Worker:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole worker (and its beat): a crash, not a shutdown."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@contextmanager
def celery_worker(env: dict[str, str] | None = None, *, concurrency: int = 32) -> Iterator[Worker]:
    from galley.celery import app

    tmp = Path(tempfile.mkdtemp(prefix="galley-worker-"))
    full_env = dict(os.environ)
    full_env.update(
        {
            "DJANGO_SETTINGS_MODULE": "galley.settings",
            "DATABASE_URL": _database_url(),
            "GALLEY_DATA_DIR": str(settings.DATA_DIR),
            "GALLEY_REDIS_PREFIX": str(
                app.conf.broker_transport_options.get("global_keyprefix", "galley:")
            ).rstrip(":")
            if settings.REDIS_URL
            else settings.GALLEY_REDIS_PREFIX,
            "PYTHONUNBUFFERED": "1",
        }
    )
    full_env.update(env or {})
    log_path = tmp / "worker.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        worker_argv(concurrency=concurrency, schedule=str(tmp / "beat-schedule"), loglevel="INFO"),
        cwd=ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = Worker(proc, log_path)
    try:
        deadline = time.monotonic() + 30
        while "ready." not in worker.log():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the celery worker did not start:\n" + worker.log()[-3000:])
            time.sleep(0.1)
        yield worker
    finally:
        # A warm shutdown takes seconds and proves nothing here; tests own their data.
        worker.kill()
        log.close()
        print(worker.log()[-4000:])  # shown by pytest only when the test fails
        shutil.rmtree(tmp, ignore_errors=True)
