import os
from typing import Any

from celery import Celery
from celery.signals import task_prerun, worker_init

from galley.broker import register as register_broker

register_broker()

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "galley.settings")

app = Celery("galley")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Task modules that live below an app package rather than at `<app>/tasks.py`.
app.conf.imports = ("harness.tasks", "sandboxes.tasks", "skills.tasks")


@worker_init.connect
def _load_step_modules(**_kwargs: Any) -> None:
    """What a harness step imports on first use is imported before the worker takes a task: the model
    providers (the anthropic SDK: its types are pydantic models built at import, over a second of CPU on 2
    cores) and the sandbox toolset. Otherwise every new worker process's first step paid it (a first text
    turn of 1.9 s against 25 ms for the next)."""
    import harness.providers.anthropic  # noqa: F401
    import harness.providers.openai  # noqa: F401
    import sandboxes.toolset  # noqa: F401


@task_prerun.connect
def _drop_unusable_connections(**_kwargs: Any) -> None:
    """A task thread keeps its SQLite connection from one task to the next (settings:
    CELERY_DB_REUSE_MAX); one a previous task left broken or inside a transaction is closed here."""
    from django.db import close_old_connections

    close_old_connections()


def worker_argv(
    *, concurrency: int, schedule: str, loglevel: str = "WARNING", beat: bool = True, name: str = "worker"
) -> list[str]:
    """The command of one Galley worker process: harness steps on a thread pool (they mostly wait on
    the model), with the periodic sweeper (beat) embedded in one of them."""
    import sys

    return [
        sys.executable, "-m", "celery", "-A", "galley", "worker", *(["--beat"] if beat else []),
        "--pool", "threads", "--concurrency", str(concurrency), "--hostname", f"{name}@%h",
        "--loglevel", loglevel, "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--schedule", schedule,
    ]  # fmt: skip
