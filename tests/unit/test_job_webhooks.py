"""A submission's own webhook: recorded on GenerationJob.Submitted beside the parameters, never in
them (the worker's parameters and the idempotency fingerprint are what they were)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import Mapper, StoredEvent
from pydantic import ValidationError

from domain.job_webhooks import JOB_WEBHOOK_EVENTS, JobSubmission
from domain.jobs import GenerationJob, JobParameters

AT = datetime(2026, 1, 1, tzinfo=UTC)
PARAMS = {"model": "tiny-sd", "prompt": "p", "steps": 4, "width": 64, "height": 64}


def _job(params: JobParameters) -> GenerationJob:
    return GenerationJob.submit(
        user_id="u", idempotency_key="k", params=params, tier="basic", at=AT
    )


def test_the_webhook_is_recorded_beside_the_parameters() -> None:
    plain = JobParameters(**PARAMS)
    hooked = JobSubmission(
        **PARAMS, webhook="https://example.com/h", webhook_events_filter=["job.completed"]
    )
    job = _job(hooked)
    assert job.webhook == {"url": "https://example.com/h", "events": ["job.completed"]}
    assert job.parameters == plain.as_event_data()
    assert hooked.fingerprint() == plain.fingerprint()
    assert _job(plain).webhook is None


def test_no_filter_means_every_job_event() -> None:
    job = _job(JobSubmission(**PARAMS, webhook="https://example.com/h"))
    assert job.webhook is not None and job.webhook["events"] == sorted(JOB_WEBHOOK_EVENTS)


@pytest.mark.parametrize(
    "extra",
    [
        {"webhook_events_filter": ["job.completed"]},  # a filter needs a webhook
        {"webhook": "ftp://example.com/h"},
        {"webhook": "https://example.com/h", "webhook_events_filter": []},
        {"webhook": "https://example.com/h", "webhook_events_filter": ["balance.low"]},
    ],
)
def test_malformed_webhooks_are_refused(extra: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        JobSubmission(**PARAMS, **extra)


def test_a_submitted_event_stored_before_webhooks_replays_without_one() -> None:
    job = _job(JobParameters(**PARAMS))
    mapper: Mapper[UUID] = Application[UUID](
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    ).mapper
    stored = mapper.to_stored_event(job.collect_events()[0])
    state = mapper.transcoder.decode(stored.state)
    del state["webhook"]  # the shape of every Submitted recorded before the field existed
    old = StoredEvent(
        stored.originator_id,
        stored.originator_version,
        stored.topic,
        mapper.transcoder.encode(state),
    )
    event = mapper.to_domain_event(old)
    assert isinstance(event, GenerationJob.Submitted)
    replayed = event.mutate(None)
    assert isinstance(replayed, GenerationJob) and replayed.webhook is None
