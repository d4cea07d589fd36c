"""The relay's envelopes, written straight from the stored bytes, are the contract's envelopes."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

from bench import seed_events
from domain.application import PinkseaApplication
from domain.jobs import JobParameters
from eventstore.contract import envelope_for, event_classes
from eventstore.decoding import _direct_types, decode, envelope_json
from eventstore.envelope import Envelope
from tests.audit.test_verify_and_export import ruled_user
from tests.integration.streaming_kit import T0, busy_user

# What JSON makes hard: quotes, backslashes, control characters, non-ASCII, a tiny float.
AWKWARD = JobParameters(
    model="tiny-sd",
    prompt='a "quoted" \\ back\\slash\nnew line\ttab \x1f unit é 漢字 \u2028 {"_type_":"x"}',
    negative_prompt="",
    steps=4,
    width=64,
    height=64,
    guidance_scale=0.00001,
)


def every_kind_of_event() -> PinkseaApplication:
    app = PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    busy_user(app, "enveloped", jobs=6)
    ruled_user(app, "enveloped-ruled")
    rng = random.Random(7)
    for u in range(20):
        seed_events._simulate_user(app, f"seeded-{u}", rng, jobs=12)
    app.register_user("awkward", T0)
    app.submit_job("awkward", idempotency_key="k", params=AWKWARD, at=T0 + timedelta(hours=1))
    return app


def test_envelope_json_equals_the_contracts_envelope_for_every_stored_event() -> None:
    app = every_kind_of_event()
    rows: list[dict[str, Any]] = [
        {
            "notification_id": n.id,
            "originator_id": n.originator_id,
            "originator_version": n.originator_version,
            "topic": n.topic,
            "state": n.state,
        }
        for n in app.recorder.select_notifications(start=1, limit=10**6)
    ]
    assert len({r["topic"] for r in rows}) >= 20  # many event types, not a few
    identical = 0
    for row in rows:
        fast = envelope_json(row)
        slow = envelope_for(decode(row), row["notification_id"]).to_bytes()
        assert json.loads(fast) == json.loads(slow), row["topic"]
        assert Envelope.from_bytes(fast) == Envelope.from_bytes(slow)
        identical += fast == slow
    # Only a float written in exponent form (1e-05 vs 0.00001) may differ in its bytes.
    assert identical >= len(rows) - 1
    assert any(b"0.00001" in envelope_for(decode(r), 1).to_bytes() for r in rows)


def test_every_event_type_takes_the_direct_path() -> None:
    """A new transcoding or an upcast class version would silently take the slow path: this
    says so, so the relay's speed does not quietly fall back."""
    assert {cls.TOPIC for cls in event_classes().values()} == _direct_types()  # type: ignore[attr-defined]
