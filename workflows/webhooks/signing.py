"""Standard Webhooks signatures (https://www.standardwebhooks.com): the three headers.

``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` keyed with the
secret's bytes (``whsec_<base64>``), as the ``standardwebhooks`` package computes and verifies
it; ``webhook-timestamp`` is the attempt's time in Unix seconds (receivers refuse stale ones).
While a rotated endpoint's previous secret is still valid, the header carries one signature per
secret, space-separated (the spec's rollover): a receiver holding either verifies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRETS_MAX = 2  # the current one, and the one a rotation replaced while it lasts


def signed_headers(secrets: Sequence[str], msg_id: str, at: datetime, body: str) -> dict[str, str]:
    """The headers of one attempt, signed with each of ``secrets`` (current first)."""
    assert 1 <= len(secrets) <= SECRETS_MAX, f"{len(secrets)} secrets"
    assert at.tzinfo is not None, "a signature's timestamp must be aware"
    at = at.astimezone(UTC)  # the package reads the wall time as UTC
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(Webhook(s).sign(msg_id, at, body) for s in secrets),
        "content-type": "application/json",
        "user-agent": "Pinksea-Webhooks/1",
    }
