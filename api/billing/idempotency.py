"""Idempotency-Key on the billing routes that create a Stripe session (Checkout, portal).

A session is not an event of ours, so its key is not an aggregate id as a job's is: the first
answer under (user, route, key) is kept in PostgreSQL with the request body's hash, and a
repeat within KEY_TTL_S gets that answer again (``Idempotent-Replayed: true``); the same key
with another body is a 409. After KEY_TTL_S the key is free again: Stripe keeps its own
idempotency keys 24 hours, and a Checkout Session expires after 24 hours, so an answer older
than that would send the user to a dead page. Stripe is called with a key derived from ours,
so two concurrent first requests make one session there; the row written first wins here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from api import problems as p
from api.problems import ProblemError
from api.services import Services, now

KEY_TTL_S = 24 * 3600

_SELECT = """
SELECT body_sha256, response FROM billing_idempotency
WHERE user_id = $1 AND route = $2 AND key = $3 AND created_at > $4
"""
# A fresh row wins; an expired one is replaced.
_INSERT = """
INSERT INTO billing_idempotency (user_id, route, key, body_sha256, response, created_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6)
ON CONFLICT (user_id, route, key) DO UPDATE
    SET body_sha256 = EXCLUDED.body_sha256, response = EXCLUDED.response,
        created_at = EXCLUDED.created_at
    WHERE billing_idempotency.created_at <= $7
RETURNING 1
"""


def stripe_key(route: str, user_id: str, key: str) -> str:
    """The idempotency key sent to Stripe for our (route, user, key)."""
    digest = hashlib.sha256(f"{route}\0{user_id}\0{key}".encode()).hexdigest()
    return f"pinksea-{route}-{digest}"


async def once(
    svc: Services,
    *,
    user_id: str,
    route: str,
    key: str | None,
    body: dict[str, Any],
    create: Callable[[str | None], Awaitable[dict[str, Any]]],
) -> tuple[dict[str, Any], bool]:
    """The answer for this request and whether it is a replay. ``create`` makes a new answer,
    given the Stripe idempotency key to use (None without a key)."""
    if key is None:
        return await create(None), False
    body_sha256 = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    at = now()
    fresh_after = at - timedelta(seconds=KEY_TTL_S)
    kept = await _kept(svc, user_id, route, key, body_sha256, fresh_after)
    if kept is not None:
        return kept, True
    answer = await create(stripe_key(route, user_id, key))
    won = await svc.pool.fetchval(
        _INSERT, user_id, route, key, body_sha256, json.dumps(answer), at, fresh_after
    )
    if won:
        return answer, False
    kept = await _kept(svc, user_id, route, key, body_sha256, fresh_after)
    assert kept is not None, "a fresh idempotency row vanished"
    return kept, True


async def _kept(
    svc: Services, user_id: str, route: str, key: str, body_sha256: str, fresh_after: Any
) -> dict[str, Any] | None:
    row = await svc.pool.fetchrow(_SELECT, user_id, route, key, fresh_after)
    if row is None:
        return None
    if row["body_sha256"] != body_sha256:
        raise ProblemError(
            p.IDEMPOTENCY_CONFLICT,
            "This Idempotency-Key was used for a different request; use a new key.",
        )
    answer = row["response"]
    return dict(json.loads(answer) if isinstance(answer, str) else answer)
