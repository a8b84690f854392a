"""Run the web server (Daphne) and a Celery worker together as one process group."""

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from console.celery import worker_argv


class Command(BaseCommand):
    help = "Serve the API and console with Daphne and run a Celery worker beside it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("GALLEY_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("GALLEY_PORT", "8000")))
        parser.add_argument("--no-worker", action="store_true", help="serve the web part only")

    def handle(self, *args: Any, **options: Any) -> None:
        python = sys.executable
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="console.settings")
        procs: list[subprocess.Popen[bytes]] = []
        web = [
            python, "-m", "console.webserver", "--bind", options["host"], "--port", str(options["port"]),
            "--proxy-headers", "console.asgi:application",
        ]
        procs.append(subprocess.Popen(web, env=env))
        if not options["no_worker"]:
            worker = worker_argv(
                concurrency=settings.GALLEY_WORKER_CONCURRENCY,
                schedule=str(settings.DATA_DIR / "celerybeat-schedule"),
            )
            procs.append(subprocess.Popen(worker, env=env))
        self.stdout.write(f"Galley is serving on http://{options['host']}:{options['port']}/", ending="\n")
        self.stdout.flush()

        stopping = False

        def stop(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            while not stopping and all(p.poll() is None for p in procs):
                time.sleep(0.2)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
        failed = [p for p in procs if p.returncode not in (0, -signal.SIGTERM, None)]
        if failed and not stopping:
            raise SystemExit(1)
