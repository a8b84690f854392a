"""Request bodies of /v1/organizations/webhooks, named after the SDK's params types. Fields are
checked one by one in webhooks/services.py (which the console calls with the same dicts), so
errors name the field."""

from typing import Any

from ninja import Schema
from pydantic import ConfigDict


class _Body(Schema):
    model_config = ConfigDict(extra="forbid")


class WebhookCreateParams(_Body):
    url: Any = None
    enabled_events: Any = None
    name: Any = None
    description: Any = None


class WebhookUpdateParams(_Body):
    url: Any = None
    enabled_events: Any = None
    name: Any = None
    description: Any = None
    state: Any = None


def body_of(params: Schema) -> dict[str, Any]:
    return params.model_dump(exclude_unset=True)
