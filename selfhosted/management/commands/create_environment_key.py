from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.models import Environment
from api.errors import ApiError
from selfhosted.services import environment_key_create


class Command(BaseCommand):
    help = (
        "Create an environment key for a self_hosted environment and print the raw key on the last "
        "line (only its hash is stored)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("environment_id")
        parser.add_argument("name")

    def handle(self, *args: object, **options: object) -> None:
        environment = Environment.objects.filter(pk=str(options["environment_id"])).first()
        if environment is None:
            raise CommandError(f"environment {options['environment_id']!r} was not found.")
        try:
            key, raw = environment_key_create(environment=environment, name=str(options["name"]))
        except ApiError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Created environment key {key.id} ({key.name}) for environment {environment.pk}.")
        self.stdout.write(raw)
