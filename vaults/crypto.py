"""Vault encryption at rest: MultiFernet over keys from GALLEY_VAULT_KEYS, or a key file generated in
the data dir for the embedded default. The first key encrypts; every key decrypts (rotation)."""

import json
import os
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from galley.env import ConfigError


def _key_file_keys() -> list[str]:
    path = settings.GALLEY_VAULT_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(Fernet.generate_key().decode() + "\n")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def configured_keys() -> list[str]:
    return list(settings.GALLEY_VAULT_KEYS) or _key_file_keys()


@lru_cache(maxsize=1)
def _fernet() -> MultiFernet:
    keys = configured_keys()
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except (ValueError, TypeError):
        raise ConfigError("GALLEY_VAULT_KEYS holds a value that is not a Fernet key") from None


def reset_cache() -> None:
    _fernet.cache_clear()


def encrypt(secret: dict[str, Any]) -> str:
    return _fernet().encrypt(json.dumps(secret).encode()).decode()


def decrypt(token: str) -> dict[str, Any]:
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken:
        pass
    if not settings.GALLEY_VAULT_KEYS:
        # `rotate_vault_keys` run by another process may have prepended a key to the file.
        reset_cache()
        try:
            return json.loads(_fernet().decrypt(token.encode()))
        except InvalidToken:
            pass
    raise ConfigError("a vault secret cannot be decrypted with the configured keys")


def rotate(token: str) -> str:
    return _fernet().rotate(token.encode()).decode()


def add_key_to_file() -> None:
    """Prepend a fresh key to the embedded key file (the old ones still decrypt)."""
    path = settings.GALLEY_VAULT_KEY_FILE
    keys = _key_file_keys()
    path.write_text("\n".join([Fernet.generate_key().decode(), *keys]) + "\n")
    reset_cache()
