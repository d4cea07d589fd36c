"""The users' data keys: the one place a sealed prompt can be opened (domain/personal_data.py).

One AES-256 data key per user, made on the user's first submission, kept in its own table
(``personal_data_keys``, read_models/migrations/0014_personal_data_keys.sql), never in the
event store, its snapshots, Kafka or a backup of them. Each key is stored wrapped (AES-256-GCM)
under the key-encryption key of the setting ``PINKSEA_PERSONAL_DATA_KEK``, which lives in the
secret store, so neither a copy of that table nor one of the event store opens a prompt alone.

Deleting a user's row is the erasure: every value sealed under the key reads as
:data:`~domain.personal_data.ERASED` from then on, in every replay, export and rebuild.

A value is sealed with AES-256-GCM, a fresh 96-bit nonce each time and, as associated data,
the user and the field, so a sealed value copied into another user's job or another field
does not open. Fingerprints use HMAC-SHA-256 under a subkey derived from the data key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domain.personal_data import ERASED, SEALED_PREFIX, is_sealed

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits, GCM's own size; random per seal (at most ~2^32 seals per key)
_WRAP_CONTEXT = b"pinksea personal data key v1"
_SEAL_CONTEXT = b"pinksea personal data v1"
_DIGEST_CONTEXT = b"pinksea fingerprint v1"


class SealedValueCorrupt(Exception):
    """A sealed value that the user's live key does not open (altered, or another user's)."""


def _aad(*parts: str | bytes) -> bytes:
    return b"\x1f".join(p if isinstance(p, bytes) else p.encode() for p in parts)


def parse_kek(text: str) -> bytes:
    """The key-encryption key from its setting: 32 bytes, base64 (standard or url-safe)."""
    try:
        raw = base64.b64decode(text.strip() + "=" * (-len(text.strip()) % 4), altchars=b"-_")
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 of 32 random bytes") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"must be base64 of {KEY_BYTES} random bytes, not {len(raw)}")
    return raw


@dataclass(frozen=True)
class DataKey:
    """A user's live data key: seals, digests and opens that user's personal data."""

    user_id: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        assert len(self.key) == KEY_BYTES

    def seal(self, field: str, plaintext: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.key).encrypt(
            nonce, plaintext.encode(), _aad(_SEAL_CONTEXT, self.user_id, field)
        )
        return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, field: str, value: str) -> str:
        if not is_sealed(value):
            return value  # plaintext: submitted before sealing
        try:
            raw = base64.urlsafe_b64decode(value.removeprefix(SEALED_PREFIX))
            plain = AESGCM(self.key).decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(_SEAL_CONTEXT, self.user_id, field)
            )
        except (InvalidTag, binascii.Error, ValueError):
            raise SealedValueCorrupt(f"a sealed {field} of {self.user_id} does not open") from None
        return plain.decode()

    def digest(self, field: str, plaintext: str) -> str:
        mac_key = hmac.digest(self.key, _DIGEST_CONTEXT, hashlib.sha256)
        return hmac.new(mac_key, _aad(field, plaintext), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ErasedKey:
    """The opener of a user without a key: their sealed values were erased."""

    user_id: str

    def open(self, field: str, value: str) -> str:
        return ERASED if is_sealed(value) else value


Opener = DataKey | ErasedKey


class PersonalKeys:
    """The key store on the read side's database (``pool``), wrapping keys under ``kek``."""

    def __init__(self, pool: asyncpg.Pool, kek: bytes) -> None:
        assert len(kek) == KEY_BYTES
        self._pool = pool
        self._kek = AESGCM(kek)

    def _wrap(self, user_id: str, key: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._kek.encrypt(nonce, key, _aad(_WRAP_CONTEXT, user_id))

    def _unwrap(self, user_id: str, wrapped: bytes) -> DataKey:
        try:
            key = self._kek.decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _aad(_WRAP_CONTEXT, user_id)
            )
        except InvalidTag:
            # Never read as "erased": a wrong PINKSEA_PERSONAL_DATA_KEK must fail loudly.
            raise RuntimeError(
                f"the data key of {user_id} does not unwrap: is PINKSEA_PERSONAL_DATA_KEK the "
                "key it was wrapped with?"
            ) from None
        return DataKey(user_id, key)

    async def key_for(self, user_id: str) -> DataKey:
        """The user's data key, made and stored on first need (concurrent first needs agree
        on one: the first insert wins and every caller reads it back)."""
        wrapped = await self._pool.fetchval(
            "SELECT wrapped_key FROM personal_data_keys WHERE user_id = $1", user_id
        )
        if wrapped is None:
            wrapped = await self._pool.fetchval(
                "INSERT INTO personal_data_keys (user_id, wrapped_key) VALUES ($1, $2) "
                "ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id "
                "RETURNING wrapped_key",
                user_id,
                self._wrap(user_id, os.urandom(KEY_BYTES)),
            )
        assert wrapped is not None
        return self._unwrap(user_id, bytes(wrapped))

    async def opener(self, user_id: str) -> Opener:
        """What opens the user's sealed values now: their key, or ERASED without one."""
        return (await self.openers([user_id]))[user_id]

    async def openers(self, user_ids: Iterable[str]) -> dict[str, Opener]:
        wanted = sorted(set(user_ids))
        rows = await self._pool.fetch(
            "SELECT user_id, wrapped_key FROM personal_data_keys WHERE user_id = ANY($1::text[])",
            wanted,
        )
        found: dict[str, Opener] = {
            r["user_id"]: self._unwrap(r["user_id"], bytes(r["wrapped_key"])) for r in rows
        }
        return {u: found.get(u) or ErasedKey(u) for u in wanted}

    async def erase(self, user_id: str) -> bool:
        """Destroy the user's data key; False when there was none (erased before, or never
        made). Irreversible: nothing sealed under it opens again."""
        deleted = await self._pool.fetchval(
            "DELETE FROM personal_data_keys WHERE user_id = $1 RETURNING user_id", user_id
        )
        return deleted is not None
