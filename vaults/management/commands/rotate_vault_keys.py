from django.core.management.base import BaseCommand

from vaults.services import vault_keys_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every vault credential with the first key. With GALLEY_VAULT_KEYS, put the new key "
        "first and keep the old ones until this has run; on the embedded key file a new key is added first."
    )

    def handle(self, *args: object, **options: object) -> None:
        count = vault_keys_rotate()
        self.stdout.write(f"Re-encrypted {count} credential(s) with the current first key.")
