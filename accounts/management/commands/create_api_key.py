from django.core.management.base import BaseCommand, CommandParser

from accounts.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key and print the raw key on the last line (only its hash is stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")

    def handle(self, *args: object, **options: object) -> None:
        key, raw = api_key_create(name=str(options["name"]))
        self.stdout.write(f"Created API key {key.id} ({key.name}) in workspace {key.workspace_id}.")
        self.stdout.write(raw)
