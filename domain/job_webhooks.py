"""Where a job reports its progress: a submission's own webhook (Replicate's ``webhook`` and
``webhook_events_filter``), and the names of the webhook events.

Pure data. Whether a URL is safe to call (https, no internal address after DNS resolution) needs
I/O: the API checks it at submission and the delivery process again at each attempt
(workflows/webhooks/urls.py). ``GenerationJob.Submitted`` records the target (its ``webhook``),
so the delivery process, which reads the jobs topic, knows it for every later event of the job.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from domain.job_events import WebhookTarget
from domain.parameters import JobParameters

JobWebhookEvent = Literal[
    "job.accepted", "job.started", "job.completed", "job.failed", "job.cancelled"
]
JOB_WEBHOOK_EVENTS: tuple[str, ...] = get_args(JobWebhookEvent)
LOW_BALANCE_EVENT = "balance.low"
WebhookEventType = Literal[JobWebhookEvent, "balance.low"]
WEBHOOK_EVENTS: tuple[str, ...] = (*JOB_WEBHOOK_EVENTS, LOW_BALANCE_EVENT)

WEBHOOK_URL_CHARS_MAX = 2048
WebhookUrl = Annotated[
    str,
    Field(
        max_length=WEBHOOK_URL_CHARS_MAX,
        pattern=r"^https?://[^\s\x00]+$",
        examples=["https://example.com/hooks/pinksea"],
    ),
]
_WEBHOOK_FIELDS = ("webhook", "webhook_events_filter")


class JobSubmission(JobParameters):
    """A submission: the job's parameters and, optionally, where to report its progress."""

    webhook: WebhookUrl | None = Field(
        None,
        description="an https URL that receives this job's events, signed with your default "
        "webhook secret (GET /v1/webhooks/default/secret)",
    )
    webhook_events_filter: list[JobWebhookEvent] | None = Field(
        None,
        min_length=1,
        max_length=len(JOB_WEBHOOK_EVENTS),
        description="which of the job's events go to `webhook` (default: all of them)",
    )

    @model_validator(mode="after")
    def _filter_needs_a_webhook(self) -> JobSubmission:
        if self.webhook is None and self.webhook_events_filter is not None:
            raise ValueError("webhook_events_filter needs a webhook")
        return self

    def as_event_data(self) -> dict[str, Any]:
        # The job's parameters only: the webhook is recorded beside them (Submitted.webhook),
        # so neither the parameters a worker runs nor the fingerprint depend on it.
        data = super().as_event_data()
        for name in _WEBHOOK_FIELDS:
            data.pop(name, None)
        return data

    def webhook_target(self) -> WebhookTarget | None:
        if self.webhook is None:
            return None
        events: list[str] = list(self.webhook_events_filter or JOB_WEBHOOK_EVENTS)
        return WebhookTarget(url=self.webhook, events=sorted(set(events)))
