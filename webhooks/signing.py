"""Standard Webhooks signing (the `standardwebhooks` package the SDK's `webhooks.unwrap` verifies
with): `webhook-id`, `webhook-timestamp`, and one `v1,<signature>` per active secret."""

import base64
import secrets
from datetime import datetime

from standardwebhooks import Webhook


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def headers(*, msg_id: str, timestamp: datetime, body: str, keys: list[str]) -> dict[str, str]:
    signatures = [Webhook(secret).sign(msg_id=msg_id, timestamp=timestamp, data=body) for secret in keys]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
