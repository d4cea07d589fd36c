"""Short-lived tokens for one job's event stream, for clients that cannot send headers (a
browser's ``EventSource``): ``POST /v1/jobs/{id}/stream-token`` hands one out, and
``GET /v1/jobs/{id}/events?access_token=`` accepts it for that job only, until it expires.

A token is ``pst_<payload>.<mac>``: the payload (base64url JSON) names the user, the job and
the expiry; the MAC is HMAC-SHA256 over it with the key every API process reads from
``api_signing_keys`` (made once by migration 0009). Nothing is written per token; a token only
opens the stream (checked at connect), and a deactivated account's tokens are refused like its
other credentials (api/deps.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

PREFIX = "pst_"
TOKEN_TTL = timedelta(minutes=5)
TOKEN_LENGTH_MAX = 512  # a user id of 128 characters, a job id, an expiry and the MAC fit

_KEY_NAME = "stream-token"


class InvalidStreamToken(Exception):
    """Not a token of ours, tampered with, expired, or for another job."""


@dataclass
class StreamTokens:
    pool: asyncpg.Pool
    _key: bytes | None = None

    async def key(self) -> bytes:
        if self._key is None:
            secret = await self.pool.fetchval(
                "SELECT secret FROM api_signing_keys WHERE name = $1", _KEY_NAME
            )
            assert secret is not None and len(secret) >= 16, "migration 0009 makes the key"
            self._key = bytes(secret)
        return self._key

    async def issue(self, user_id: str, job_id: UUID, now: datetime) -> tuple[str, datetime]:
        expires_at = now.replace(microsecond=0) + TOKEN_TTL
        claims = {"sub": user_id, "job": str(job_id), "exp": int(expires_at.timestamp())}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{PREFIX}{payload}.{_b64(await self._mac(payload))}", expires_at

    async def verify(self, token: str, job_id: UUID, now: datetime) -> str:
        """The user the token was issued to, if it is valid now for ``job_id``."""
        if len(token) > TOKEN_LENGTH_MAX or not token.startswith(PREFIX):
            raise InvalidStreamToken("not a stream token")
        payload, _, mac = token.removeprefix(PREFIX).partition(".")
        try:
            given = _unb64(mac)
            claims = json.loads(_unb64(payload))
        except ValueError:
            raise InvalidStreamToken("not a stream token") from None
        if not hmac.compare_digest(given, await self._mac(payload)):
            raise InvalidStreamToken("the token's signature does not match")
        if not isinstance(claims, dict) or claims.get("job") != str(job_id):
            raise InvalidStreamToken("the token is for another job")
        expiry = claims.get("exp")
        if not isinstance(expiry, int) or expiry <= now.timestamp():
            raise InvalidStreamToken("the token has expired")
        user = claims.get("sub")
        if not isinstance(user, str) or not user:
            raise InvalidStreamToken("not a stream token")
        return user

    async def _mac(self, payload: str) -> bytes:
        return hmac.new(await self.key(), payload.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    # binascii.Error is a ValueError
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
