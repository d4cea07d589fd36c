"""Messages between the scheduler, the GPU workers and the settler (JSON on Kafka).

GPU workers know nothing of the domain or the event store: these models, Kafka, Redis and S3
are their whole contract with the rest of the system. (The job parameters in a dispatch are the
one definition of domain/parameters.py: pure data, which the API validates its bodies with.)

- ``Dispatch`` on ``pinksea.gpu.dispatch.<tier>.v1`` (key: job id): run this attempt of this
  job on this worker. Every worker of a tier reads every dispatch of its tier (a consumer group
  of its own, so no rebalancing ever pauses a running job) and runs those addressed to it. Its
  ``parameters`` are the job's, as domain/parameters.py defines them, the seed resolved.
- ``Heartbeat``, ``Started`` and ``Finished`` on ``pinksea.gpu.reports.v1`` (key: worker id for
  heartbeats, job id otherwise). The scheduler tracks workers and leases from them; the
  settler turns ``Started`` and ``Finished`` into commands on the event store. A heartbeat
  names the job running and the one prefetched (received, queued behind it, not started).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from domain.parameters import RunParameters


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class Dispatch(_Message):
    kind: Literal["dispatch"] = "dispatch"
    job_id: UUID
    attempt: int = Field(ge=1)
    worker_id: str
    user_id: str
    tier: str
    parameters: RunParameters
    budget_ms: int = Field(description="the hold's GPU-time budget: the worker stops there")
    dispatched_at: datetime

    @property
    def key(self) -> str:
        return f"{self.job_id}:{self.attempt}"

    @model_validator(mode="before")
    @classmethod
    def _parameters_at_the_top(cls, data: Any) -> Any:
        """A dispatch sent before ``parameters`` (each of them a field of its own) reads the
        same. Kept for one release: a worker may read what a scheduler sent before it."""
        if isinstance(data, dict) and "parameters" not in data:
            names = RunParameters.model_fields.keys()
            parameters = {name: data[name] for name in names if name in data}
            data = {k: v for k, v in data.items() if k not in names} | {"parameters": parameters}
        return data


class Heartbeat(_Message):
    kind: Literal["heartbeat"] = "heartbeat"
    worker_id: str
    tier: str
    busy_job_id: UUID | None = None
    busy_attempt: int | None = None
    models_loaded: list[str] = Field(default_factory=list)
    at: datetime
    # Prefetch (issue 18): dispatches a worker holds queued behind its running job, received
    # and not started. 0 is a worker of the release before, which is sent work only when idle.
    prefetch_slots: int = Field(default=0, ge=0)
    queued_job_id: UUID | None = None
    queued_attempt: int | None = None


class Started(_Message):
    kind: Literal["started"] = "started"
    job_id: UUID
    attempt: int
    worker_id: str
    gpu: str
    model_load_ms: int
    at: datetime


class Outcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # the user cancelled; gpu_ms is the time used up to the stop
    BUDGET_EXHAUSTED = "budget_exhausted"  # stopped at the hold's time budget


class FinishedImage(BaseModel):
    name: str
    key: str
    thumbnail_key: str
    size_bytes: int
    width: int
    height: int
    # SHA-256 (hex) of the PNG as uploaded: a receipt names the bytes its job made. Absent
    # in the reports of workers older than it.
    sha256: str | None = None


class Finished(_Message):
    kind: Literal["finished"] = "finished"
    job_id: UUID
    attempt: int
    worker_id: str
    outcome: Outcome
    gpu_ms: int = Field(ge=0, description="billed figure: synchronized wall time of the run")
    cuda_ms: int | None = Field(None, description="CUDA-event time, audit figure (CUDA only)")
    model_load_ms: int = 0
    images: list[FinishedImage] = Field(default_factory=list)
    error: str | None = None
    retryable: bool = False
    fault: Literal["platform", "user"] | None = None
    at: datetime


Report = Annotated[Heartbeat | Started | Finished, Field(discriminator="kind")]
_reports: TypeAdapter[Heartbeat | Started | Finished] = TypeAdapter(Report)


def parse_report(raw: bytes) -> Heartbeat | Started | Finished:
    return _reports.validate_json(raw)


class DeadLetter(_Message):
    """A job that exhausted its attempts, on ``pinksea.gpu.dlq.v1`` for an operator to inspect."""

    kind: Literal["dead_letter"] = "dead_letter"
    job_id: UUID
    attempts: int
    reason: str
    at: datetime
