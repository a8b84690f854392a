import asyncio
import logging
import os
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from selfhosted.worker import environment_worker


class Command(BaseCommand):
    help = (
        "Serve a self_hosted environment's work queue from this host, running every tool in a "
        "bubblewrap sandbox here. The key comes from ANTHROPIC_ENVIRONMENT_KEY; the server from "
        "--base-url or ANTHROPIC_BASE_URL. Needs no database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--environment", required=True, help="the environment id (env_...)")
        parser.add_argument("--base-url", default=None, help="the Galley server, e.g. https://galley.example")
        parser.add_argument("--worker-id", default=None, help="sent as Anthropic-Worker-ID")
        parser.add_argument(
            "--max-idle", type=float, default=60.0, help="seconds to stay on a session after its turn ends"
        )

    def handle(self, *args: object, **options: object) -> None:
        key = os.environ.get("ANTHROPIC_ENVIRONMENT_KEY", "").strip()
        if not key:
            raise CommandError("set ANTHROPIC_ENVIRONMENT_KEY to the environment key.")
        base_url = str(options["base_url"] or os.environ.get("ANTHROPIC_BASE_URL", "")).strip()
        if not base_url:
            raise CommandError("pass --base-url or set ANTHROPIC_BASE_URL to the Galley server's URL.")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        worker = environment_worker(
            base_url=base_url,
            environment_id=str(options["environment"]),
            environment_key=key,
            worker_id=options["worker_id"] or None,  # type: ignore[arg-type]
            max_idle=float(options["max_idle"]),  # type: ignore[arg-type]
        )

        def stop(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt  # asyncio.run cancels the worker, which stops its current item

        signal.signal(signal.SIGTERM, stop)
        self.stdout.write(f"Serving environment {options['environment']} from {base_url}; Ctrl-C stops.")
        try:
            asyncio.run(worker.run())
        except KeyboardInterrupt:
            self.stdout.write("Stopped.")
