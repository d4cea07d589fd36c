"""Redis key names shared by the API, the scheduler and the GPU workers."""

from __future__ import annotations

from uuid import UUID

CANCEL_FLAG_TTL_S = 24 * 3600
PROGRESS_TTL_S = 24 * 3600


def cancel_flag(prefix: str, job_id: UUID | str) -> str:
    """Set ("1") when the user cancels a running job; the worker checks it every step."""
    return f"{prefix}job:{job_id}:cancel"


def progress_channel(prefix: str, job_id: UUID | str) -> str:
    """Pub/sub channel of a job's live progress (JSON: job_id, attempt, step, total_steps, at)."""
    return f"{prefix}job:{job_id}:progress"


def last_progress(prefix: str, job_id: UUID | str) -> str:
    """The latest progress message, for a client that subscribes late."""
    return f"{prefix}job:{job_id}:progress:last"
