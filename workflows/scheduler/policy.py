"""Which queued job goes to which idle worker: a pure function, tested on its own.

- Work-conserving: as long as an idle worker and an eligible job of its tier exist, assign.
- Fair: users take turns, least recently served first (then the oldest waiting job), so one
  user's burst never starves another, also across calls; within a user, first come first served.
- Bounded: a user never has more jobs running than their plan's concurrent-jobs limit.
- Warm: a worker that already holds the job's model is preferred (no model load).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from itertools import count
from uuid import UUID


@dataclass(frozen=True)
class QueuedJob:
    job_id: UUID
    user_id: str
    tier: str
    model: str
    queue_position: int


@dataclass
class IdleWorker:
    worker_id: str
    tier: str
    models: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Assignment:
    job: QueuedJob
    worker_id: str


class Turns:
    """Remembers when each user was last served, so turns rotate across calls."""

    def __init__(self) -> None:
        self._clock = count(1)
        self.last_served: MutableMapping[str, int] = {}

    def served(self, user_id: str) -> None:
        self.last_served[user_id] = next(self._clock)

    def order_key(self, user_id: str, oldest_position: int) -> tuple[int, int]:
        return (self.last_served.get(user_id, 0), oldest_position)


def assign(
    queue: Sequence[QueuedJob],
    idle_workers: Sequence[IdleWorker],
    running_per_user: Mapping[str, int],
    limit_per_user: Mapping[str, int],
    turns: Turns,
) -> list[Assignment]:
    running = Counter(running_per_user)
    assignments: list[Assignment] = []
    for tier in sorted({w.tier for w in idle_workers}):
        workers = [w for w in idle_workers if w.tier == tier]
        per_user: dict[str, list[QueuedJob]] = {}
        for job in sorted((j for j in queue if j.tier == tier), key=lambda j: j.queue_position):
            per_user.setdefault(job.user_id, []).append(job)
        while workers:
            eligible = [
                u for u, jobs in per_user.items() if jobs and running[u] < limit_per_user.get(u, 1)
            ]
            if not eligible:
                break
            user = min(eligible, key=lambda u: turns.order_key(u, per_user[u][0].queue_position))
            job = per_user[user].pop(0)
            worker = next((w for w in workers if job.model in w.models), workers[0])
            workers.remove(worker)
            running[user] += 1
            turns.served(user)
            assignments.append(Assignment(job, worker.worker_id))
    return assignments
