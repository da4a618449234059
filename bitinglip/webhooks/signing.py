"""Signatures in the Standard Webhooks form, made by its own library: `webhook-id` (the same on every
retry of one event, so a receiver can drop duplicates), `webhook-timestamp` (seconds; receivers refuse
old ones, so a captured request cannot be replayed later) and `webhook-signature: v1,<base64 of
HMAC-SHA256 over "id.timestamp.body">` with the owner's secret."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(16)}"


def signed_headers(secret: str, message_id: str, timestamp: datetime, body: bytes) -> dict[str, str]:
    signature = Webhook(secret).sign(message_id, timestamp, body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
    }
