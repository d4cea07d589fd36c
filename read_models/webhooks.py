"""Webhook endpoints and their deliveries (read_models/migrations/0008_webhooks.sql): the
user-scoped, cursor-paged queries the API serves, and the signing secrets.

Endpoints are written by the API (not event-sourced, like api_keys); deliveries by the delivery
process (workflows/webhooks/). Every query names the user: another user's endpoint or delivery
is simply not found.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from typing import Any

import asyncpg

from read_models.models import Page
from read_models.queries import Db, _check_limit, _page, decode_cursor, encode_cursor

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32

ENDPOINT_COLUMNS = (
    "endpoint_id, url, description, enabled_events, disabled, created_at, updated_at,"
    " previous_secret_expires_at"
)
DELIVERY_COLUMNS = (
    "delivery_id, endpoint_id, event_id, event_type, status, attempts, next_attempt_at,"
    " last_attempt_at, last_status_code, last_error, delivered_at, occurred_at, created_at"
)
_AFTER_EVERYTHING = ("infinity", "~")  # sorts after every id (we_..., whd_...)


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes one: ``whsec_`` and base64 of its bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


async def default_secret(db: Db, user_id: str, at: datetime) -> str:
    """The user's secret for the webhooks a submission names, created on first use (by the API
    or the delivery process, whichever comes first: the INSERT settles a race)."""
    await db.execute(
        "INSERT INTO webhook_default_secrets (user_id, secret, created_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (user_id) DO NOTHING",
        user_id,
        new_secret(),
        at,
    )
    secret = await db.fetchval(
        "SELECT secret FROM webhook_default_secrets WHERE user_id = $1", user_id
    )
    assert isinstance(secret, str)
    return secret


async def get_endpoint(db: Db, user_id: str, endpoint_id: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE user_id = $1 AND endpoint_id = $2",
        user_id,
        endpoint_id,
    )


async def list_endpoints(
    db: Db, user_id: str, cursor: str | None, limit: int
) -> Page[asyncpg.Record]:
    """The user's endpoints, newest first."""
    limit = _check_limit(limit)
    created, last = (
        decode_cursor(cursor, "webhook-endpoints", str, str) if cursor else (_AFTER_EVERYTHING)
    )
    rows = await db.fetch(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE user_id = $1"
        " AND (created_at, endpoint_id) < ($2::text::timestamptz, $3)"
        " ORDER BY created_at DESC, endpoint_id DESC LIMIT $4",
        user_id,
        created,
        last,
        limit + 1,
    )
    return _page(rows, limit, _same, lambda r: _cursor("webhook-endpoints", r, "endpoint_id"))


async def list_deliveries(
    db: Db, user_id: str, endpoint_id: str, cursor: str | None, limit: int
) -> Page[asyncpg.Record]:
    """An endpoint's deliveries, newest first."""
    limit = _check_limit(limit)
    created, last = (
        decode_cursor(cursor, "webhook-deliveries", str, str) if cursor else (_AFTER_EVERYTHING)
    )
    rows = await db.fetch(
        f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries"
        " WHERE endpoint_id = $1 AND user_id = $2"
        " AND (created_at, delivery_id) < ($3::text::timestamptz, $4)"
        " ORDER BY created_at DESC, delivery_id DESC LIMIT $5",
        endpoint_id,
        user_id,
        created,
        last,
        limit + 1,
    )
    return _page(rows, limit, _same, lambda r: _cursor("webhook-deliveries", r, "delivery_id"))


async def retry_delivery(
    db: Db, user_id: str, endpoint_id: str, delivery_id: str, at: datetime
) -> asyncpg.Record | None:
    """Make the delivery due now, whatever its state (a delivered one is sent again; a failed
    one gets one more attempt, after which the schedule, used up, fails it again)."""
    return await db.fetchrow(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $4"
        " WHERE delivery_id = $3 AND endpoint_id = $2 AND user_id = $1"
        f" RETURNING {DELIVERY_COLUMNS}",
        user_id,
        endpoint_id,
        delivery_id,
        at,
    )


def _same(row: Any) -> Any:
    return row


def _cursor(kind: str, row: asyncpg.Record, id_column: str) -> str:
    return encode_cursor(kind, row["created_at"].isoformat(), row[id_column])
