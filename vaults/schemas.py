"""Request bodies of /v1/vaults and credentials, named after the SDK's params types. `auth` is a
union checked field by field in vaults/services.py (which the console calls with the same dicts)."""

from typing import Any

from ninja import Schema
from pydantic import ConfigDict


class _Body(Schema):
    model_config = ConfigDict(extra="forbid")


class VaultCreateParams(_Body):
    display_name: str
    metadata: dict[str, str] | None = None


class VaultUpdateParams(_Body):
    display_name: str | None = None
    metadata: dict[str, str | None] | None = None


class CredentialCreateParams(_Body):
    auth: dict[str, Any]
    display_name: str | None = None
    metadata: dict[str, str] | None = None


class CredentialUpdateParams(_Body):
    auth: dict[str, Any] | None = None
    display_name: str | None = None
    metadata: dict[str, str | None] | None = None


def body_of(params: Schema) -> dict[str, Any]:
    return params.model_dump(exclude_unset=True)
