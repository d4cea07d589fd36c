"""Standard Webhooks signatures (https://www.standardwebhooks.com): the three headers.

``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` keyed with the
secret's bytes (``whsec_<base64>``), as the ``standardwebhooks`` package computes and verifies
it; ``webhook-timestamp`` is the attempt's time in Unix seconds (receivers refuse stale ones).
"""

from __future__ import annotations

from datetime import UTC, datetime

from standardwebhooks import Webhook


def signed_headers(secret: str, msg_id: str, at: datetime, body: str) -> dict[str, str]:
    assert at.tzinfo is not None, "a signature's timestamp must be aware"
    at = at.astimezone(UTC)  # the package reads the wall time as UTC
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
        "content-type": "application/json",
        "user-agent": "Pinksea-Webhooks/1",
    }
