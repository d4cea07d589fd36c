"""Domain events to public envelopes, their Kafka topics, and their JSON Schemas.

``pinksea events schemas`` (and the drift test) regenerate docs/events/ from the domain's own
event classes, so the published contract cannot silently diverge from the code.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from functools import cache
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, AggregateEvent, DomainEventProtocol
from pydantic import BaseModel, create_model
from pydantic_core import to_jsonable_python

from domain.boards import Board
from domain.credits import CreditAccount
from domain.jobs import GenerationJob
from domain.personal_data import PersonalData
from domain.subscription import Subscription
from domain.uploads import Upload
from domain.user_models import UserModel
from domain.webhooks import StripeEventRecord
from eventstore.envelope import Envelope
from infra.topics import CREDITS_TOPIC, JOBS_TOPIC, SUBSCRIPTIONS_TOPIC

AGGREGATE_TOPICS: dict[type[Aggregate], str] = {
    CreditAccount: CREDITS_TOPIC,
    Subscription: SUBSCRIPTIONS_TOPIC,
    GenerationJob: JOBS_TOPIC,
    StripeEventRecord: SUBSCRIPTIONS_TOPIC,  # billing facts travel with the subscriptions
    Upload: JOBS_TOPIC,  # a job's input images travel with the jobs
    Board: JOBS_TOPIC,  # boards file the jobs' images: one topic keeps their order
    PersonalData: SUBSCRIPTIONS_TOPIC,  # erasures of personal data: facts of the account
    UserModel: JOBS_TOPIC,  # LoRAs travel with the jobs that name them, like uploads
}
_BASE_FIELDS = frozenset({"originator_id", "originator_version", "timestamp"})
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "events"


def type_name(event_cls: type) -> str:
    """``pinksea:CreditAccount.CreditsReserved`` -> ``CreditAccount.CreditsReserved``."""
    topic: str = event_cls.TOPIC  # type: ignore[attr-defined]
    return topic.removeprefix("pinksea:")


@cache
def event_classes() -> dict[str, type]:
    """Every event type an aggregate emits, by public type name."""
    found: dict[str, type] = {}
    for aggregate in AGGREGATE_TOPICS:
        for name, value in vars(aggregate).items():
            if (
                isinstance(value, type)
                and issubclass(value, Aggregate.Event)
                and name not in ("Event", "Created")  # "Created" is the unused library default
            ):
                found[type_name(value)] = value
    return found


def topic_for(type_or_aggregate: str) -> str:
    aggregate = type_or_aggregate.partition(".")[0]
    for cls, topic in AGGREGATE_TOPICS.items():
        if cls.__name__ == aggregate:
            return topic
    raise KeyError(f"no topic for {type_or_aggregate}")


def envelope_for(event: DomainEventProtocol[UUID], position: int) -> Envelope:
    assert isinstance(event, AggregateEvent)  # every stored event is an aggregate's
    data = {k: v for k, v in event.__dict__.items() if k not in _BASE_FIELDS}
    return Envelope(
        id=f"{event.originator_id}:{event.originator_version}",
        type=type_name(type(event)),
        aggregate_id=event.originator_id,
        version=event.originator_version,
        position=position,
        occurred_at=event.timestamp,
        data=to_jsonable_python(data),
    )


@cache
def data_model(type_: str) -> type[BaseModel]:
    """A pydantic model of one event type's ``data``, derived from the event class. A field
    the class gives a default (one added after events of its type were published) keeps it:
    an envelope published before the field existed is still valid and decodes to the same
    event the store's own decoding gives (the contract: fields are added, never changed)."""
    cls = event_classes()[type_]
    hints = typing.get_type_hints(cls)
    defaults = {
        f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    }
    assert not any(f.default_factory is not dataclasses.MISSING for f in dataclasses.fields(cls))
    fields: dict[str, Any] = {
        name: (hint, defaults.get(name, ...))
        for name, hint in hints.items()
        if name not in _BASE_FIELDS
    }
    return create_model(type_.replace(".", ""), **fields)


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for the envelope and every event type's data."""
    out = {"Envelope.json": Envelope.model_json_schema()}
    for type_ in sorted(event_classes()):
        schema = data_model(type_).model_json_schema()
        schema["title"] = type_
        schema["x-kafka-topic"] = topic_for(type_)
        out[f"{type_}.json"] = schema
    return out


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = directory / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
