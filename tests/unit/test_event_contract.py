"""The public event contract: committed JSON Schemas match the code, envelopes round-trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from domain.application import PinkseaApplication
from domain.jobs import JobParameters
from eventstore.contract import SCHEMA_DIR, data_model, envelope_for, event_classes, schemas
from eventstore.envelope import Envelope


def test_committed_schemas_match_the_event_classes() -> None:
    expected = schemas()
    committed = {p.name: json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.json")}
    stale = sorted(set(committed) - set(expected))
    missing = sorted(set(expected) - set(committed))
    assert not missing and not stale, (
        f"docs/events drifted (missing {missing}, stale {stale}): run `pinksea events schemas`"
    )
    for name, schema in expected.items():
        assert committed[name] == schema, f"{name} drifted: run `pinksea events schemas`"


def test_every_stored_event_becomes_a_valid_envelope() -> None:
    app = PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    at = datetime(2026, 1, 1, tzinfo=UTC)
    app.register_user("u", at)
    params = JobParameters(model="tiny-sd", prompt="p", steps=4, width=64, height=64)
    job = app.submit_job("u", idempotency_key="k", params=params, at=at)
    assert job.job_id is not None, job
    app.record_dispatch(job.job_id, attempt=1, worker_id="w", at=at)
    app.record_start(job.job_id, attempt=1, worker_id="w", gpu="T4", at=at)
    app.complete_job(job.job_id, attempt=1, gpu_ms=5, cuda_ms=None, images=[], at=at)
    seen = set()
    for n in app.recorder.select_notifications(start=1, limit=100):
        env = envelope_for(app.mapper.to_domain_event(n), n.id)
        assert Envelope.from_bytes(env.to_bytes()) == env
        assert env.id == f"{env.aggregate_id}:{env.version}" and env.position == n.id
        data_model(env.type).model_validate(env.data)  # the data obeys its schema
        seen.add(env.type)
    assert "CreditAccount.HoldSettled" in seen and seen <= set(event_classes())


def test_an_envelope_from_before_a_field_was_added_still_decodes_with_its_default() -> None:
    """Fields are added with a default, never changed: an envelope published before one was
    added (still on a topic, replayed by a consumer) is valid and decodes as the store would."""
    app = PinkseaApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    at = datetime(2026, 1, 1, tzinfo=UTC)
    app.register_user("u", at)
    params = JobParameters(model="tiny-sd", prompt="p", steps=4, width=64, height=64)
    job = app.submit_job("u", idempotency_key="k", params=params, at=at)
    [submitted] = [
        env
        for n in app.recorder.select_notifications(start=1, limit=100)
        if (env := envelope_for(app.mapper.to_domain_event(n), n.id)).type
        == "GenerationJob.Submitted"
    ]
    assert submitted.aggregate_id == job.job_id and "webhook" in submitted.data
    older = {k: v for k, v in submitted.data.items() if k != "webhook"}  # before webhooks
    assert data_model(submitted.type).model_validate(older).model_dump()["webhook"] is None
    required = schemas()["GenerationJob.Submitted.json"]["required"]
    assert "webhook" not in required and "parameters" in required
