"""Small pieces of the wire format shared by every router: timestamps and metadata (spec 1.7, 1.8)."""

from datetime import UTC, datetime
from typing import Any

from api.errors import ApiError

METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def to_utc(value: datetime, *, field: str) -> datetime:
    """A timestamp filter bound, in UTC. Python accepts offsets up to +-23:59 but PostgreSQL only
    +-15:59, so bounds are converted before they reach the database; one past the representable
    range is a 400 naming the field."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ApiError(400, f"{field}: {value.isoformat()} is out of range.") from None


def check_metadata(metadata: dict[str, Any], *, field: str = "metadata") -> dict[str, str]:
    if len(metadata) > METADATA_MAX_PAIRS:
        raise ApiError(400, f"{field}: at most {METADATA_MAX_PAIRS} pairs are allowed, got {len(metadata)}.")
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key) > METADATA_MAX_KEY:
            raise ApiError(400, f"{field}: keys must be 1-{METADATA_MAX_KEY} characters, got {key!r}.")
        if not isinstance(value, str):
            raise ApiError(400, f"{field}.{key}: values must be strings.")
        if len(value) > METADATA_MAX_VALUE:
            raise ApiError(400, f"{field}.{key}: values must be at most {METADATA_MAX_VALUE} characters.")
    return dict(metadata)


def patch_metadata(
    current: dict[str, str], patch: dict[str, Any] | None, *, empty_deletes: bool = False
) -> dict[str, str]:
    """Apply a metadata patch: a string upserts, null deletes (and "" too where the spec says so)."""
    if patch is None:
        return dict(current)
    merged = dict(current)
    for key, value in patch.items():
        if value is None or (empty_deletes and value == ""):
            merged.pop(key, None)
        else:
            merged[key] = value
    return check_metadata(merged)
