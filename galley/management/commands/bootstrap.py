"""First-run setup for `make run`: an admin user and an API key, printed with the URL."""

import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from accounts.models import Role
from accounts.services import api_key_create, user_create, workspace_get_default


class Command(BaseCommand):
    help = "Create the first admin user and API key if none exist, and print how to log in."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000/")

    def handle(self, *args: Any, **options: Any) -> None:
        credentials = settings.DATA_DIR / "first-run-credentials.txt"
        workspace_get_default()
        if not get_user_model().objects.exists():
            password = secrets.token_urlsafe(12)
            user_create(username="admin", password=password, role=Role.ADMIN)
            user = get_user_model().objects.get(username="admin")
            user.is_staff = user.is_superuser = True
            user.save(update_fields=["is_staff", "is_superuser"])
            _key, raw = api_key_create(name="make run")
            fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"login: admin\npassword: {password}\napi key: {raw}\n")
        self.stdout.write("")
        self.stdout.write(f"  Galley console and API: {options['url']}")
        if credentials.exists():
            for line in credentials.read_text().splitlines():
                self.stdout.write(f"  {line}")
            self.stdout.write(
                f"  (kept in {credentials.name} in the data dir; change the password in the console)"
            )
        else:
            self.stdout.write("  Log in with the admin account you created earlier.")
        self.stdout.write("")
