"""Which queued job goes to which idle worker: a pure function, tested on its own.

- Work-conserving: as long as an idle worker and an eligible job of its tier exist, assign.
- Fair: users take turns, least recently served first (then the oldest waiting job), so one
  user's burst never starves another, also across calls; within a user, first come first served.
- Bounded: a user never has more jobs running than their plan's concurrent-jobs limit.
- Warm: a worker that already holds the job's model is preferred (no model load).
- Prefetch: a busy worker's prefetch slot (a dispatch held queued behind its running job) is
  filled only after the idle workers have been served, soonest-free worker first; what the
  idle workers get is exactly what they would get without slots. A prefetched job counts
  against its user's limit exactly as a running one does; turns rotate over both.
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


@dataclass
class PrefetchSlot:
    """A busy worker that can hold one more dispatch, queued behind its running job."""

    worker_id: str
    tier: str
    models: frozenset[str] = field(default_factory=frozenset)
    frees_in_ms: int = 0  # when its running job is expected to end (0: unknown or overdue)


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
    prefetch_slots: Sequence[PrefetchSlot] = (),
) -> list[Assignment]:
    """One job at most per idle worker and per prefetch slot (a worker is one or the other).
    ``running_per_user`` counts every job dispatched, running or prefetched. The idle workers
    of every tier are served first, exactly as if there were no slots (a user's limit is shared
    by the tiers: a slot must not take the turn an idle worker of another tier would use)."""
    assert not {w.worker_id for w in idle_workers} & {s.worker_id for s in prefetch_slots}
    running = Counter(running_per_user)
    per_tier: dict[str, dict[str, list[QueuedJob]]] = {}
    for job in sorted(queue, key=lambda j: j.queue_position):
        per_tier.setdefault(job.tier, {}).setdefault(job.user_id, []).append(job)
    assignments: list[Assignment] = []
    for tier in sorted({w.tier for w in idle_workers}):
        workers = [w for w in idle_workers if w.tier == tier]
        _fill(workers, per_tier.get(tier, {}), running, limit_per_user, turns, assignments)
    for tier in sorted({s.tier for s in prefetch_slots}):
        slots = sorted((s for s in prefetch_slots if s.tier == tier), key=lambda s: s.frees_in_ms)
        _fill(slots, per_tier.get(tier, {}), running, limit_per_user, turns, assignments)
    return assignments


def _fill(
    workers: list[IdleWorker] | list[PrefetchSlot],
    per_user: dict[str, list[QueuedJob]],
    running: Counter[str],
    limit_per_user: Mapping[str, int],
    turns: Turns,
    assignments: list[Assignment],
) -> None:
    """Give ``workers`` (one tier's, in order of preference) the tier's jobs, users in turn."""
    free: list[IdleWorker | PrefetchSlot] = list(workers)
    while free:
        eligible = [
            u for u, jobs in per_user.items() if jobs and running[u] < limit_per_user.get(u, 1)
        ]
        if not eligible:
            return
        user = min(eligible, key=lambda u: turns.order_key(u, per_user[u][0].queue_position))
        job = per_user[user].pop(0)
        worker = next((w for w in free if job.model in w.models), free[0])
        free.remove(worker)
        running[user] += 1
        turns.served(user)
        assignments.append(Assignment(job, worker.worker_id))
