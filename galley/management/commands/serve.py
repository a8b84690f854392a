"""Run the web server (Daphne, N processes on one port) and the Celery worker(s) under a supervisor
that restarts whichever dies (galley/supervisor.py) until SIGTERM or SIGINT."""

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from galley.celery import worker_argv
from galley.supervisor import Child, Supervisor, daphne_argv, default_web_workers, listening_socket


class Command(BaseCommand):
    help = "Serve the API and console with Daphne and run Celery workers beside it, restarting any that die."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("GALLEY_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("GALLEY_PORT", "8000")))
        parser.add_argument("--no-worker", action="store_true", help="serve the web part only")
        parser.add_argument(
            "--web-workers",
            type=int,
            default=int(os.environ.get("GALLEY_WEB_WORKERS", "0")) or default_web_workers(),
            help="web (Daphne) processes sharing the port (default: the number of cores)",
        )
        parser.add_argument(
            "--worker-processes",
            type=int,
            default=int(os.environ.get("GALLEY_WORKER_PROCESSES", "1")),
            help="Celery worker processes (each runs GALLEY_WORKER_CONCURRENCY threads)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["web_workers"] < 1 or options["worker_processes"] < 1:
            raise CommandError("--web-workers and --worker-processes must be at least 1")
        python = sys.executable
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="galley.settings")
        try:
            sock = listening_socket(options["host"], options["port"])
        except OSError as exc:
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {exc}") from None
        children = [
            Child(f"web-{i + 1}", daphne_argv(python, sock), env, pass_fds=(sock.fileno(),))
            for i in range(options["web_workers"])
        ]
        if not options["no_worker"]:
            for i in range(options["worker_processes"]):
                argv = worker_argv(
                    concurrency=settings.GALLEY_WORKER_CONCURRENCY,
                    schedule=str(settings.DATA_DIR / "celerybeat-schedule"),
                    beat=i == 0,  # one scheduler per install
                    name=f"worker{i + 1}",
                )
                children.append(Child(f"worker-{i + 1}", argv, env))

        def ready() -> None:
            self.stdout.write(f"Galley is serving on http://{options['host']}:{options['port']}/")
            self.stdout.flush()

        Supervisor(children, on_ready=ready).run()
        sock.close()
