from typing import Any

from django.core.management.base import BaseCommand, CommandError

from skills.runtime import skill_python_ensure


class Command(BaseCommand):
    help = "Build the built-in skills' Python libraries for this host's sandboxes (once)."

    def handle(self, *args: Any, **options: Any) -> None:
        prefix = skill_python_ensure()
        if prefix is None:
            raise CommandError("the build failed; the server log has the installer's output")
        self.stdout.write(str(prefix))
