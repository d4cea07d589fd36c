"""Personal data in events, sealed: what the event store, Kafka and the read models keep of a
job's prompts is ciphertext under its user's data key, so deleting the key erases them
(crypto-shredding) while every event, posting and balance stays and replays exactly.

This module is the sealed form and the rules around it, no cryptography and no I/O: the key
store (infra/personal_keys.py) implements :class:`Sealer` and :class:`Opener` with AES-256-GCM
under a key kept outside the event store. A sealed value is a string, ``sealed:v2:``, the
generation of the key that sealed it, ``:`` and the base64url of nonce + ciphertext (``sealed:v1:``
and the base64url: sealed before keys had generations, by a user's first key), so a stored
``parameters`` dict keeps its shape and JSON types; a string without either prefix is plaintext
(jobs submitted before sealing, read as they are).

Where the plaintext is needed (the API's job views, the scheduler's dispatch to a GPU worker)
it is opened with the user's key; where it is not, a reader sees :data:`WITHHELD`; once the
key is erased, :data:`ERASED`. The idempotency fingerprint of a sealed job is taken over the
parameters with each personal field replaced by a keyed digest (:func:`blinded`): the same
request with the same key gives the same fingerprint, and nothing in the store can be
guessed back from it, neither before nor after the erasure.

``PersonalData`` is the user's record of erasures: the events say that and when personal data
was erased, and by whom, never what it was.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, TypeGuard
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.ids import PINKSEA_NAMESPACE
from domain.units import require_aware

# A sealed value's prefixes: v1 (no generation named: the user's first key) and v2, which names
# the generation of the key that sealed it (infra/personal_keys.py).
SEALED_PREFIXES = ("sealed:v1:", "sealed:v2:")
ERASED = "[erased]"  # what a sealed value reads as once its key is gone
WITHHELD = "[sealed]"  # what a reader without the key sees (a projection, an estimate)
# The fields of a job's parameters that hold what a person wrote.
PERSONAL_FIELDS = ("prompt", "negative_prompt")
DIGEST_PREFIX = "hmac:"


class Sealer(Protocol):
    """Seals a user's personal data (the user's data key)."""

    def seal(self, field: str, plaintext: str) -> str:
        """The sealed form of ``plaintext`` (fresh nonce: two seals of one text differ)."""
        ...

    def digest(self, field: str, plaintext: str) -> str:
        """A keyed digest of ``plaintext`` (hex): equal texts give equal digests."""
        ...


class Opener(Protocol):
    """Opens a user's sealed values: the plaintext, or :data:`ERASED` once the key is gone."""

    def open(self, field: str, value: str) -> str: ...


def is_sealed(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and value.startswith(SEALED_PREFIXES)


def is_sealed_parameters(data: dict[str, Any]) -> bool:
    """Whether a stored ``parameters`` dict holds sealed personal fields (else: plaintext,
    submitted before sealing)."""
    return any(is_sealed(data.get(name)) for name in PERSONAL_FIELDS)


def sealed(data: dict[str, Any], sealer: Sealer) -> dict[str, Any]:
    """``data`` (a request: plaintext) with each non-empty personal field sealed (an empty one
    says nothing). Every one, also a text that happens to look sealed: what a person wrote is
    never stored as it is, and reading it back never mistakes it for ciphertext."""
    out = dict(data)
    for name in PERSONAL_FIELDS:
        value = out.get(name)
        if isinstance(value, str) and value:
            out[name] = sealer.seal(name, value)
    return out


def opened(data: dict[str, Any], opener: Opener) -> dict[str, Any]:
    """``data`` with each sealed personal field opened (plaintext, or ERASED)."""
    out = dict(data)
    for name in PERSONAL_FIELDS:
        value = out.get(name)
        if is_sealed(value):
            out[name] = opener.open(name, value)
    return out


def withheld(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with each sealed personal field replaced by WITHHELD: what a reader without
    the key may validate and use (every other field is as submitted)."""
    out = dict(data)
    for name in PERSONAL_FIELDS:
        if is_sealed(out.get(name)):
            out[name] = WITHHELD
    return out


def blinded(data: dict[str, Any], sealer: Sealer) -> dict[str, Any]:
    """``data`` with each personal field replaced by its keyed digest: the input of a sealed
    job's fingerprint (stable for the same request, opaque without the key)."""
    out = dict(data)
    for name in PERSONAL_FIELDS:
        value = out.get(name)
        if isinstance(value, str):  # the request's plaintext (it may look sealed: see sealed)
            out[name] = DIGEST_PREFIX + sealer.digest(name, value)
    return out


def personal_data_id(user_id: str) -> UUID:
    return uuid5(PINKSEA_NAMESPACE, "\x1f".join(("personal-data", user_id)))


class PersonalData(Aggregate):
    """A user's erasures of personal data, one aggregate per user (``personal_data_id``)."""

    TOPIC = "pinksea:PersonalData"

    class Created(Aggregate.Created):
        TOPIC = "pinksea:PersonalData.Created"

    class Opened(Aggregate.Created):
        TOPIC = "pinksea:PersonalData.Opened"
        user_id: str

    class Erased(Aggregate.Event):
        """The user's data key was destroyed: every prompt sealed under it reads as erased.
        ``images``, ``uploads`` and ``models`` (LoRAs): how many were deleted with it;
        ``actor``: the user themself (``self``) or the admin who erased it."""

        TOPIC = "pinksea:PersonalData.Erased"
        actor: str
        images: int
        uploads: int
        models: int = 0  # added with LoRA erasure: 0 in the erasures recorded before

    @staticmethod
    def create_id(user_id: str) -> UUID:
        return personal_data_id(user_id)

    @event(Opened)
    def __init__(self, user_id: str, timestamp: datetime) -> None:
        self.user_id = user_id
        self.erasures = 0

    def erase(self, *, actor: str, images: int, uploads: int, models: int, at: datetime) -> None:
        require_aware(at)
        assert images >= 0 and uploads >= 0 and models >= 0
        self._erased(actor=actor, images=images, uploads=uploads, models=models, timestamp=at)

    @event(Erased)
    def _erased(
        self, actor: str, images: int, uploads: int, models: int, timestamp: datetime
    ) -> None:
        self.erasures += 1
