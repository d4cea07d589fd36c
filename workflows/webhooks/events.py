"""The webhook events: which stored events become one, its id, and its body.

The body follows the Standard Webhooks payload, ``{"type", "timestamp", "data"}``, with the
event's ``id`` as well (the same as the ``webhook-id`` header). The id derives from the stored
event's (``<aggregate_id>:<version>``), so every delivery of one event, to any endpoint and on
any attempt, carries the same id: receivers deduplicate by it.

Pure: no I/O, no clock (``timestamp`` is the event's business time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.job_webhooks import LOW_BALANCE_EVENT
from domain.units import format_credits
from eventstore.envelope import Envelope

SUBMITTED = "GenerationJob.Submitted"
LOW_BALANCE_REACHED = "CreditAccount.LowBalanceReached"
# Stored job event -> webhook event type (a status the job's owner follows).
JOB_EVENTS = {
    "GenerationJob.Accepted": "job.accepted",
    "GenerationJob.Started": "job.started",
    "GenerationJob.Completed": "job.completed",
    "GenerationJob.Failed": "job.failed",
    "GenerationJob.Cancelled": "job.cancelled",
}


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: str
    occurred_at: datetime
    data: dict[str, Any]

    def body(self) -> str:
        """The JSON that is signed and sent (fixed once recorded: every attempt sends it)."""
        payload = {
            "id": self.id,
            "type": self.type,
            "timestamp": self.occurred_at.isoformat(),
            "data": self.data,
        }
        return json.dumps(payload, separators=(",", ":"))


def event_id(envelope_id: str) -> str:
    """``evt_<aggregate id hex>_<version>`` from the stored event's ``<aggregate_id>:<version>``."""
    aggregate, _, version = envelope_id.partition(":")
    return f"evt_{UUID(aggregate).hex}_{int(version)}"


def _money(name: str, mc: int) -> dict[str, Any]:
    return {f"{name}_mc": mc, f"{name}_credits": format_credits(mc)}


def job_event(envelope: Envelope) -> WebhookEvent | None:
    """The webhook event of a stored job event (None: none follows from it)."""
    kind = JOB_EVENTS.get(envelope.type)
    if kind is None:
        return None
    d = envelope.data
    data: dict[str, Any] = {"job_id": str(envelope.aggregate_id), "status": kind.split(".")[1]}
    if kind == "job.accepted":
        data |= _money("hold", d["hold_mc"]) | {
            "budget_ms": d["budget_ms"],
            "estimate_ms": d["estimate_ms"],
        }
    elif kind == "job.started":
        data |= {"status": "running", "attempt": d["attempt"], "gpu": d["gpu"]}
    elif kind == "job.completed":
        data |= {"gpu_ms": d["gpu_ms"], **_money("charged", d["charged_mc"])}
        # The API's links (GET one for a signed URL of the PNG and its thumbnail): a signed
        # URL expires within the hour, while a delivery may be retried for a day.
        data["images"] = [
            {
                "name": i["name"],
                "href": f"/v1/images/{i['name']}",
                "width": i["width"],
                "height": i["height"],
                "size_bytes": i["size_bytes"],
            }
            for i in d["images"]
        ]
    elif kind == "job.failed":
        # The reason text is for operators (api/failures.py): GET the job for the sentence.
        data |= {
            "fault": d["fault"],
            "retryable": d["retryable"],
            "gpu_ms": d["gpu_ms"],
            **_money("charged", d["charged_mc"]),
        }
    else:  # cancelled
        data |= {
            "after_start": d["after_start"],
            "gpu_ms": d["gpu_ms"],
            **_money("charged", d["charged_mc"]),
        }
    return WebhookEvent(event_id(envelope.id), kind, envelope.occurred_at, data)


def low_balance_event(envelope: Envelope) -> WebhookEvent:
    assert envelope.type == LOW_BALANCE_REACHED
    d = envelope.data
    data = _money("available", d["available_mc"]) | _money("threshold", d["threshold_mc"])
    return WebhookEvent(event_id(envelope.id), LOW_BALANCE_EVENT, envelope.occurred_at, data)
