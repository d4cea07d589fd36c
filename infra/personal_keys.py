"""The users' data keys: the one place a sealed prompt can be opened (domain/personal_data.py).

One AES-256 data key per user, made on the user's first submission, kept in its own table
(``personal_data_keys``, read_models/migrations/0014_personal_data_keys.sql), never in the
event store, its snapshots, Kafka or a backup of them. Each key is stored wrapped (AES-256-GCM)
under the key-encryption key of the setting ``PINKSEA_PERSONAL_DATA_KEK``, which lives in the
secret store, so neither a copy of that table nor one of the event store opens a prompt alone.

Destroying a user's key is the erasure: every value sealed under it reads as
:data:`~domain.personal_data.ERASED` from then on, in every replay, export and rebuild. The row
stays, without its key (``erased_at`` set), as the record of how many keys the user has had: a
key made on the user's next need is the next **generation**
(read_models/migrations/0021_personal_data_key_generations.sql), and every value names the
generation that sealed it, so a value of a destroyed generation reads as erased under the new
key while one of the live generation that does not open is corrupt and says so.

A value is sealed with AES-256-GCM, a fresh 96-bit nonce each time and, as associated data,
the user, the key's generation and the field, so a sealed value copied into another user's job
or another field, or given another generation, does not open. Fingerprints use HMAC-SHA-256
under a subkey derived from the data key.
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

from domain.personal_data import ERASED, is_sealed

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits, GCM's own size; random per seal (at most ~2^32 seals per key)
_WRAP_CONTEXT = b"pinksea personal data key v1"
_SEAL_CONTEXT = b"pinksea personal data v1"
_DIGEST_CONTEXT = b"pinksea fingerprint v1"
SEALED_V1 = "sealed:v1:"  # + base64url: a first key's seal before generations were named
SEALED_V2 = "sealed:v2:"  # + generation + ":" + base64url


class SealedValueCorrupt(Exception):
    """A sealed value of the user's live generation that their key does not open (altered, or
    another user's), or of a generation they never had."""


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


def _seal_aad(user_id: str, generation: int, field: str) -> bytes:
    # Generation 1's values were sealed before generations were named: their associated data
    # is without one, and stays so that they open.
    if generation == 1:
        return _aad(_SEAL_CONTEXT, user_id, field)
    return _aad(_SEAL_CONTEXT, user_id, str(generation), field)


def sealed_generation(value: str) -> tuple[int, str]:
    """The generation a sealed value names and its base64url body."""
    if value.startswith(SEALED_V1):
        return 1, value.removeprefix(SEALED_V1)
    generation, sep, body = value.removeprefix(SEALED_V2).partition(":")
    if not (value.startswith(SEALED_V2) and sep and generation.isdigit()):
        raise ValueError("not a sealed value")
    return int(generation), body


@dataclass(frozen=True)
class DataKey:
    """A user's live data key, of its ``generation``: seals, digests and opens that user's
    personal data (and reads a value of an earlier, destroyed generation as erased)."""

    user_id: str
    key: bytes = field(repr=False)
    generation: int = 1

    def __post_init__(self) -> None:
        assert len(self.key) == KEY_BYTES
        assert self.generation >= 1, self.generation

    def seal(self, field: str, plaintext: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        aad = _seal_aad(self.user_id, self.generation, field)
        sealed = AESGCM(self.key).encrypt(nonce, plaintext.encode(), aad)
        body = base64.urlsafe_b64encode(nonce + sealed).decode()
        return f"{SEALED_V2}{self.generation}:{body}"

    def open(self, field: str, value: str) -> str:
        if not is_sealed(value):
            return value  # plaintext: submitted before sealing
        try:
            generation, body = sealed_generation(value)
            if generation < self.generation:
                return ERASED  # sealed under a key an erasure destroyed
            if generation > self.generation:
                raise ValueError("a generation the user has not had")
            raw = base64.urlsafe_b64decode(body)
            aad = _seal_aad(self.user_id, generation, field)
            plain = AESGCM(self.key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
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

    def _unwrap(self, user_id: str, wrapped: bytes, generation: int) -> DataKey:
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
        return DataKey(user_id, key, generation)

    async def key_for(self, user_id: str) -> DataKey:
        """The user's data key, made and stored on first need, of the generation after the
        last one erased (concurrent first needs agree on one: the first write wins, the
        others' upserts change nothing and every caller reads the winner back)."""
        row = await self._pool.fetchrow(
            "SELECT wrapped_key, generation FROM personal_data_keys WHERE user_id = $1", user_id
        )
        if row is None or row["wrapped_key"] is None:
            row = await self._pool.fetchrow(
                "INSERT INTO personal_data_keys AS k (user_id, wrapped_key) VALUES ($1, $2) "
                "ON CONFLICT (user_id) DO UPDATE SET wrapped_key = EXCLUDED.wrapped_key, "
                "  generation = k.generation + 1, erased_at = NULL, created_at = now() "
                "  WHERE k.wrapped_key IS NULL "
                "RETURNING wrapped_key, generation",
                user_id,
                self._wrap(user_id, os.urandom(KEY_BYTES)),
            ) or await self._pool.fetchrow(
                "SELECT wrapped_key, generation FROM personal_data_keys WHERE user_id = $1",
                user_id,
            )
        assert row is not None and row["wrapped_key"] is not None, user_id
        return self._unwrap(user_id, bytes(row["wrapped_key"]), row["generation"])

    async def opener(self, user_id: str) -> Opener:
        """What opens the user's sealed values now: their key, or ERASED without one."""
        return (await self.openers([user_id]))[user_id]

    async def openers(self, user_ids: Iterable[str]) -> dict[str, Opener]:
        wanted = sorted(set(user_ids))
        rows = await self._pool.fetch(
            "SELECT user_id, wrapped_key, generation FROM personal_data_keys "
            "WHERE user_id = ANY($1::text[]) AND wrapped_key IS NOT NULL",
            wanted,
        )
        found: dict[str, Opener] = {
            r["user_id"]: self._unwrap(r["user_id"], bytes(r["wrapped_key"]), r["generation"])
            for r in rows
        }
        return {u: found.get(u) or ErasedKey(u) for u in wanted}

    async def erase(self, user_id: str) -> bool:
        """Destroy the user's data key, keeping its generation; False when there was none
        (erased before, or never made). Irreversible: nothing sealed under it opens again."""
        destroyed = await self._pool.fetchval(
            "UPDATE personal_data_keys SET wrapped_key = NULL, erased_at = now() "
            "WHERE user_id = $1 AND wrapped_key IS NOT NULL RETURNING user_id",
            user_id,
        )
        return destroyed is not None
