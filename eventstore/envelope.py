"""The public envelope of every domain event on Kafka (JSON, versioned by topic name).

    {"id": "<aggregate_id>:<version>", "type": "CreditAccount.CreditsReserved",
     "aggregate_id": "...", "version": 7, "position": 1234, "occurred_at": "...", "data": {...}}

``id`` is unique per event, so consumers deduplicate by it; ``position`` is the event's
notification id in the event store (its commit order). ``data`` holds the event's own fields
as plain JSON; docs/events/ has a JSON Schema per type. The library's stored state (possibly
compressed or encrypted) is never published.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(description="<aggregate_id>:<version>, unique per event")
    type: str = Field(description="Aggregate.EventName, e.g. CreditAccount.CreditsReserved")
    aggregate_id: UUID
    version: int = Field(ge=1, description="the aggregate's version after this event")
    position: int = Field(ge=1, description="notification id in the event store")
    occurred_at: datetime = Field(description="business time of the event")
    data: dict[str, Any]
    # The domain event this envelope was made from, when its maker had one at hand (a rebuild
    # decodes each stored event once): decoding.domain_event returns it instead of validating
    # ``data`` back into an event. Not part of the envelope's JSON; never set from Kafka.
    _event: Any = PrivateAttr(default=None)

    def carrying(self, event: Any) -> Envelope:
        """This envelope, remembering the domain event it was made from."""
        self._event = event
        return self

    @property
    def event_made_from(self) -> Any:
        """The domain event ``carrying`` attached, or None."""
        return self._event

    def __eq__(self, other: object) -> bool:
        """Equal envelopes have equal fields, whatever event one of them carries."""
        if not isinstance(other, Envelope):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # its data is a dict: never hashable

    @property
    def aggregate_type(self) -> str:
        return self.type.partition(".")[0]

    @property
    def name(self) -> str:
        return self.type.partition(".")[2]

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        return cls.model_validate_json(raw)
