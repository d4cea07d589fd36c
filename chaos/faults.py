"""The fault plan: seeded, so a run is replayable (same seed, same faults at the same offsets),
and complete (every process is killed at least once, every dependency fails at least once).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from chaos.partition import PARTITIONED, ChaosPartitions
from chaos.processes import Supervisor
from chaos.stack import ChaosStack


@dataclass(frozen=True)
class Fault:
    at_s: float  # offset from the start of the load
    kind: str  # kill_process, or one of DEPENDENCY_FAULTS, PARTITION_FAULTS or DISK_FAULTS
    target: str  # process name, or the dependency
    duration_s: float  # down time (kill: until the supervisor restarts it anyway)

    def describe(self) -> str:
        return f"t+{self.at_s:5.1f}s {self.kind:<16} {self.target:<12} {self.duration_s:.1f}s"


#: Each kind of outage and the dependency it hits: restart_* kills the server (PostgreSQL with
#: SIGQUIT, the rest with SIGKILL) and starts it again after 1-5 s; pause_* freezes it with
#: SIGSTOP for 3-8 s, then SIGCONT. One dependency has one outage at a time.
DEPENDENCY_FAULTS = {
    "restart_postgres": "postgres",
    "pause_postgres": "postgres",
    "restart_kafka": "kafka",
    "pause_kafka": "kafka",
    "pause_redis": "redis",
    "restart_s3": "s3",
    "pause_s3": "s3",
}
#: Each network partition (chaos/partition.py) and the dependency it cuts one process off
#: from, for 5-20 s: on both sides of the lease (10 s) of a partitioned GPU worker, which then
#: either reports after the heal or loses its job to another worker. One outage of that
#: dependency at a time, as above.
PARTITION_FAULTS = {kind: dependency for kind, (_, dependency) in PARTITIONED.items()}
#: PostgreSQL out of disk space (ChaosStack.fill_postgres_disk) for 5-15 s: commands are
#: refused 503 meanwhile and nothing is half-written. Only where its data directory is on a
#: tmpfs the run could mount (root).
DISK_FAULTS = {"fill_postgres_disk": "postgres"}


def plan_faults(
    seed: int,
    processes: list[str],
    window_s: float,
    rounds: int,
    start_s: float = 5.0,
    partitions: bool = False,
    disk_full: bool = False,
) -> list[Fault]:
    """``rounds`` rounds; each kills every process once and fails every dependency once, in a
    shuffled order at random offsets inside ``[start_s, window_s)``; with ``partitions``, each
    round also makes each of PARTITION_FAULTS once, with ``disk_full`` each of DISK_FAULTS
    (each drawn apart: a seed's other faults are the same with or without them)."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    for _ in range(rounds):
        for name in processes:
            faults.append(Fault(0, "kill_process", name, 0))
        for kind, target in DEPENDENCY_FAULTS.items():
            down = rng.uniform(3, 8) if kind.startswith("pause_") else rng.uniform(1, 5)
            faults.append(Fault(0, kind, target, round(down, 1)))
    offsets = sorted(rng.uniform(start_s, window_s) for _ in faults)
    rng.shuffle(faults)
    planned = [
        Fault(round(at, 1), f.kind, f.target, f.duration_s)
        for at, f in zip(offsets, faults, strict=True)
    ]
    # S3's kill -9 in the window's second half, so that images stored before it exist and the
    # verdict shows they survived it (chaos/images.py); the order stays by offset.
    late_s = max(start_s, window_s / 2)
    planned = [
        Fault(round(rng.uniform(late_s, window_s), 1), f.kind, f.target, f.duration_s)
        if f.kind == "restart_s3" and f.at_s < late_s
        else f
        for f in planned
    ]
    if partitions:
        planned += _drawn_apart(
            f"{seed}-partitions", PARTITION_FAULTS, rounds, start_s, window_s, 5, 20
        )
    if disk_full:
        planned += _drawn_apart(f"{seed}-disk-full", DISK_FAULTS, rounds, start_s, window_s, 5, 15)
    return sorted(planned, key=lambda f: f.at_s)


def _drawn_apart(
    seed: str,
    kinds: dict[str, str],
    rounds: int,
    start_s: float,
    window_s: float,
    down_s_min: float,
    down_s_max: float,
) -> list[Fault]:
    """Each of ``kinds`` once a round, at a random offset, down ``down_s_min..down_s_max``,
    from a generator of its own (``seed``), so that the plan's other faults stay the same."""
    rng = random.Random(seed)
    return [
        Fault(
            round(rng.uniform(start_s, window_s), 1),
            kind,
            dependency,
            round(rng.uniform(down_s_min, down_s_max), 1),
        )
        for _ in range(rounds)
        for kind, dependency in kinds.items()
    ]


@dataclass
class Injector:
    stack: ChaosStack
    supervisor: Supervisor
    plan: list[Fault]
    partitions: ChaosPartitions | None = None  # where the plan has partitions
    injected: Counter[str] = field(default_factory=Counter)
    log: list[str] = field(default_factory=list)
    injected_at: list[tuple[Fault, datetime]] = field(default_factory=list)  # wall clock

    async def run(self, started: float) -> None:
        """Inject the plan in order. A dependency's outage runs in the background, so a process
        can be killed while Kafka is still down; two outages of one dependency never overlap."""
        outages: dict[str, asyncio.Task[None]] = {}
        for fault in self.plan:
            await asyncio.sleep(max(0.0, started + fault.at_s - time.monotonic()))
            self.log.append(f"{time.monotonic() - started:6.1f}s {fault.describe()}")
            self.injected[fault.kind] += 1
            if fault.kind == "kill_process":
                self.injected_at.append((fault, datetime.now(UTC)))
                self.supervisor.kill(fault.target)
                continue
            if fault.target in outages:
                await outages[fault.target]
            outages[fault.target] = asyncio.create_task(self._outage(fault))
        await asyncio.gather(*outages.values())

    async def _outage(self, fault: Fault) -> None:
        # When it really starts: after the dependency's previous outage ended.
        self.injected_at.append((fault, datetime.now(UTC)))
        if fault.kind == "restart_postgres":
            await self.stack.restart_postgres(fault.duration_s)
        elif fault.kind == "restart_kafka":
            await self.stack.restart_kafka(fault.duration_s)
        elif fault.kind == "restart_s3":
            await self.stack.restart_s3(fault.duration_s)
        elif fault.kind == "fill_postgres_disk":
            await self.stack.fill_postgres_disk(fault.duration_s)
        elif fault.kind.startswith("pause_") and fault.kind in DEPENDENCY_FAULTS:
            await self.stack.pause(fault.target, fault.duration_s)
        elif fault.kind in PARTITION_FAULTS:
            assert self.partitions is not None, "a partition planned without namespaces"
            await asyncio.to_thread(self.partitions.partition, fault.kind)
            try:
                await asyncio.sleep(fault.duration_s)
            finally:
                await asyncio.to_thread(self.partitions.heal, fault.kind)
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")
