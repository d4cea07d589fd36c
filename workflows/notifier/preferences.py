"""A user's notification preferences: where to write to, and whether to.

The address is the ``email`` claim of the user's JWT (Cognito signs users in by e-mail; the
ID token carries it), recorded by the API whenever it sees a new one; API keys and tokens
without the claim leave it as it was. The flag is the user's own (``PATCH /v1/me``). Neither is
money nor history, so both live in a plain table (read_models/migrations/0004_notifications.sql)
that the API writes and the notifier reads, like ``api_keys``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import asyncpg

# RFC 5321: a forward path holds at most 256 octets, the two angle brackets included.
MAX_ADDRESS_CHARS = 254

# A deliberately plain addr-spec: printable ASCII, one @, a dotted domain. Whatever it refuses
# (quoted local parts, non-ASCII addresses) is never stored, so an e-mail header can never be
# built from a value with a line break, a comma or a second address in it.
_ADDRESS = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z0-9-]{2,63}$"
)

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection  # both run the same queries


@dataclass(frozen=True)
class Preferences:
    email: str | None  # None: no address known, so nothing can be sent
    low_balance_emails: bool


# What a user who never changed anything gets: e-mails on, once an address is known.
DEFAULT = Preferences(email=None, low_balance_emails=True)


def usable_address(value: str | None) -> str | None:
    """``value`` if it is an address the notifier may write to, else None."""
    if value is None or len(value) > MAX_ADDRESS_CHARS or not _ADDRESS.match(value):
        return None
    return value


async def get_preferences(db: Executor, user_id: str) -> Preferences:
    row = await db.fetchrow(
        "SELECT email, low_balance_emails FROM notification_preferences WHERE user_id = $1",
        user_id,
    )
    if row is None:
        return DEFAULT
    return Preferences(email=row["email"], low_balance_emails=row["low_balance_emails"])


async def remember_address(db: Executor, user_id: str, email: str | None, at: datetime) -> bool:
    """Record the address of the user's sign-in when it is usable and new; True if recorded.

    The write only happens on a change, so callers may call this on every sign-in they have
    not cached yet without rewriting the row each time."""
    address = usable_address(email)
    if address is None:
        return False
    status = await db.execute(
        "INSERT INTO notification_preferences (user_id, email, updated_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, "
        "updated_at = EXCLUDED.updated_at "
        "WHERE notification_preferences.email IS DISTINCT FROM EXCLUDED.email",
        user_id,
        address,
        at,
    )
    return bool(status == "INSERT 0 1")


async def set_low_balance_emails(db: Executor, user_id: str, enabled: bool, at: datetime) -> None:
    """Turn the user's low-balance e-mails on or off (the address is left as it is)."""
    await db.execute(
        "INSERT INTO notification_preferences (user_id, low_balance_emails, updated_at) "
        "VALUES ($1, $2, $3) ON CONFLICT (user_id) DO UPDATE SET "
        "low_balance_emails = EXCLUDED.low_balance_emails, updated_at = EXCLUDED.updated_at",
        user_id,
        enabled,
        at,
    )
