"""bench.dispatch: how close the scheduler and workers come to an ideal schedule.

The whole generation path runs in this process on the real stack, as tests/e2e run it:
commands -> event store -> relay -> Kafka -> scheduler -> dispatch -> 3 GPU workers (CPU, the
tiny pipeline, each job in a thread) -> S3 + reports -> settler -> event store, with every
projection live. Several users on a plan allowing 100 concurrent jobs, so no per-user limit
serializes the work. Each worker first runs one warm-up job (its model load), so nothing
measured below includes a model load.

1. Makespan: N jobs of mixed durations (steps 2..30, 2..16 with --quick; 64, 128 or 192 px)
   submitted at once, round-robin over the users. (No 256 px: three pipelines sharing two CPU
   cores run slower than the tiny model's calibration, and large jobs then stop at their hold's
   time budget. A job that does still counts: it held its worker as long as it ran.)
   Makespan = first submission -> the last job's end (Completed, or Failed, worker-reported).
   Each job's duration is its Started -> end time (worker-reported timestamps on the job
   aggregate: pipeline, PNG and upload). Baseline: greedy list scheduling of those measured
   durations in submission order on 3 machines from time 0 (what an ideal dispatcher with zero
   hand-over cost achieves). Target: makespan <= 1.1x greedy.
2. Idle while waiting: for each worker, the time it held no job (between Finished acknowledged
   and the next dispatch taken up, from its JobRecords; a prefetched dispatch is taken up when
   the worker starts it, not when it arrives) while some accepted job had not been taken up by
   any worker yet; summed over the workers, and per job. Target (issue 18): < 5 ms per job.
3. Submit -> start latency: jobs submitted while workers are idle (rounds of 1, 2 and 3 jobs,
   each round after the previous one finished); submit call -> Started (worker-reported),
   minus the model load (0 after the warm-up). Target (issue 18): p99 < 50 ms.

Everything runs twice in one invocation, each on a stack of its own: the scheduler's prefetch
off (the baseline: a worker is sent a job only when idle) and on (issue 18, part 3: a busy
worker holds one more dispatch queued behind its running job); the last table compares them.

    python -m bench.dispatch [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from eventsourcing.domain import Aggregate
from rich.console import Console
from rich.table import Table

from bench.consumer_overhead import gpu_stack, new_worker
from bench.projection_lag import quiet_logs, relay_retries, warn_if_disturbed
from bench.support import percentile, summary
from domain.application import PinkseaApplication
from domain.jobs import JobParameters
from eventstore.persistence import event_store_env
from eventstore.relay import Relay
from gpu_consumer.worker import GpuWorker, JobRecord
from infra.db import create_pool
from infra.kafka import ensure_topics
from infra.settings import Settings
from projections.registry import ALL_PROJECTIONS
from projections.runner import LiveProjectionRunner
from read_models.migrate import migrate
from workflows.scheduler.service import Scheduler
from workflows.settler import Settler
from workflows.tracking import TrackingPinkseaApplication

WORKERS = 3
USERS = 4
TARGET_MAKESPAN_RATIO = 1.1
TARGET_LATENCY_P99_MS = 50.0
TARGET_IDLE_PER_JOB_MS = 5.0
SMALL = JobParameters(model="tiny-sd", prompt="warm up", steps=4, width=64, height=64)


@dataclass
class Done:
    """A JobRecord and the wall time (time.time()) when the worker recorded it."""

    worker_id: str
    record: JobRecord
    at: float

    @property
    def received(self) -> float:
        return self.at - self.record.total_ms / 1000

    @property
    def job_id(self) -> uuid.UUID:
        return uuid.UUID(self.record.key.split(":")[0])


class Platform:
    """Every process of the backend in this event loop (after tests/e2e's Platform)."""

    def __init__(self, settings: Settings, *, prefetch: bool) -> None:
        self.settings = settings
        self.prefetch = prefetch
        self.app = PinkseaApplication(env=event_store_env(settings.database_url, pool_size=8))
        self.settler_app = TrackingPinkseaApplication(
            env=event_store_env(settings.database_url, pool_size=4)
        )
        self.tasks: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
        self.workers: list[GpuWorker] = []
        self.done: list[Done] = []
        self.pool: asyncpg.Pool | None = None
        self.scheduler: Scheduler | None = None

    async def start(self, workers: int) -> None:
        await ensure_topics(self.settings)
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        self.pool = await create_pool(self.settings, max_size=10)
        self._spawn(Relay(self.settings, self.pool).run)
        for p in ALL_PROJECTIONS:
            self._spawn(LiveProjectionRunner(self.settings, self.pool, p).run)
        self.scheduler = Scheduler(self.settings, self.pool, self.app, prefetch=self.prefetch)
        self._spawn(self.scheduler.run)
        self._spawn(Settler(self.settings, self.settler_app).run)
        for i in range(workers):
            worker_id = f"w{i}"
            worker = new_worker(self.settings, worker_id, self._recorder(worker_id))
            self.workers.append(worker)
            self._spawn(worker.run)
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in self.workers)), 120)
        deadline = time.monotonic() + 60
        while len(self.scheduler.workers) < workers:  # the scheduler heard every heartbeat
            if time.monotonic() > deadline:
                raise RuntimeError("the scheduler never heard from every worker")
            await asyncio.sleep(0.1)

    def _recorder(self, worker_id: str) -> Callable[[JobRecord], None]:
        return lambda record: self.done.append(Done(worker_id, record, time.time()))

    def _spawn(self, run: Callable[[asyncio.Event], object]) -> None:
        stop = asyncio.Event()
        self.tasks.append((stop, asyncio.create_task(run(stop))))  # type: ignore[arg-type]

    async def close(self) -> None:
        for stop, _ in reversed(self.tasks):
            stop.set()
        for _, task in reversed(self.tasks):
            await asyncio.wait_for(task, 60)
        if self.pool is not None:
            await self.pool.close()
        self.app.close()
        self.settler_app.close()

    async def until_terminal(self, job_ids: Sequence[uuid.UUID], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(job_ids)
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} jobs not finished after {timeout:.0f} s")
            for job_id in list(pending):
                if (await asyncio.to_thread(self.app.job, job_id)).is_terminal:
                    pending.discard(job_id)
            if pending:
                await asyncio.sleep(0.1)


def prepare_users(app: PinkseaApplication, run_id: str) -> list[str]:
    users = [f"bench-{run_id}-{u}" for u in range(USERS)]
    now = datetime.now(UTC)
    for user in users:
        app.register_user(user, now)
        app.change_plan(
            user,
            to_plan="enterprise",
            actor="bench",
            reason="bench: no per-user limit in the way",
            at=now,
            custom_terms={
                "credits_per_month": 1,
                "tier": "basic",
                "concurrent_jobs": 100,
                "storage_gb": 1,
            },
        )
        app.adjust_credits(
            user, adjustment_id="bulk", amount_mc=10**12, reason="bench", actor="bench", at=now
        )
    return users


def mixed_jobs(n: int, rng: random.Random, max_steps: int) -> list[JobParameters]:
    return [
        JobParameters(
            model="tiny-sd",
            prompt=f"a pink sea, variation {i}",
            steps=rng.randint(2, max_steps),
            width=(side := rng.choice((64, 128, 192))),
            height=side,
        )
        for i in range(n)
    ]


@dataclass
class JobTimes:
    job_id: uuid.UUID
    submitted: float  # before the submit call (time.time())
    accepted: float  # after it returned
    dispatched: float = 0.0  # Dispatched event (the scheduler's time)
    started: float = 0.0  # Started event (worker-reported)
    completed: float = 0.0  # Completed event (worker-reported)
    worker_id: str = ""
    attempts: int = 0
    status: str = ""
    failure: str = ""
    load_ms: int = 0
    received: float = 0.0  # dispatch received by its worker (JobRecord)

    @property
    def duration(self) -> float:
        return self.completed - self.started


async def submit_all(
    app: PinkseaApplication, users: list[str], jobs: list[JobParameters], tag: str
) -> list[JobTimes]:
    def run() -> list[JobTimes]:
        out = []
        for i, params in enumerate(jobs):
            submitted = time.time()
            result = app.submit_job(
                users[i % len(users)],
                idempotency_key=f"{tag}-{i}",
                params=params,
                at=datetime.now(UTC),
            )
            if result.job_id is None:
                raise RuntimeError(f"job {i} was refused: {result.detail}")
            out.append(JobTimes(result.job_id, submitted, time.time()))
        return out

    return await asyncio.to_thread(run)


def fill_times(platform: Platform, jobs: list[JobTimes]) -> None:
    """Worker-reported timestamps from each job's events, and its worker's JobRecord."""
    done = {(d.job_id, d.record.key.split(":")[1]): d for d in platform.done}
    for j in jobs:
        job = platform.app.job(j.job_id)
        j.status, j.attempts, j.worker_id = job.status, job.attempt, job.worker_id or ""
        j.failure = job.failure or ""
        for ev in platform.app.events.get(j.job_id):
            assert isinstance(ev, Aggregate.Event)
            kind = type(ev).__name__
            if kind == "Dispatched":
                j.dispatched = ev.timestamp.timestamp()
            elif kind == "Started":
                j.started = ev.timestamp.timestamp()
            elif kind in ("Completed", "Failed", "Cancelled"):
                j.completed = ev.timestamp.timestamp()  # the end of its run, whatever it was
        d = done.get((j.job_id, str(job.attempt)))
        if d is not None:
            j.load_ms, j.received = d.record.load_ms, d.received


def greedy_makespan(durations: Sequence[float], machines: int) -> float:
    """List scheduling in the given order: each job to the machine that is free first."""
    free = [0.0] * machines
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


def idle_while_waiting(
    busy: dict[str, list[tuple[float, float]]],
    waiting: list[tuple[float, float]],
    end: float,
    since: dict[str, float] | None = None,
) -> tuple[float, dict[str, float]]:
    """Seconds each worker was idle while at least one job waited (accepted, not yet received
    by a worker), up to ``end`` (and from ``since[worker]`` on, when given); and the total."""
    cuts = sorted(
        {t for a, b in waiting for t in (a, b)}
        | {t for s in busy.values() for a, b in s for t in (a, b)}
    )
    cuts = [t for t in cuts if t <= end]
    per_worker = {w: 0.0 for w in busy}
    for a, b in itertools.pairwise(cuts):
        mid = (a + b) / 2
        if not any(s <= mid < e for s, e in waiting):
            continue
        for w, spans in busy.items():
            if since is not None and mid < since.get(w, end):
                continue
            if not any(s <= mid < e for s, e in spans):
                per_worker[w] += b - a
    return sum(per_worker.values()), per_worker


@dataclass
class Results:
    prefetch: bool
    jobs: int
    makespan: float
    greedy: float
    greedy_occupancy: float
    lower_bound: float
    idle_total: float
    idle_after_first: float
    idle_per_worker: dict[str, float]
    idle_gaps_ms: list[float]
    queue_wait_ms: list[float]
    latency_ms: list[float]
    latency_parts_ms: list[tuple[float, float, float]]
    outcomes: dict[str, int]
    mean_duration: float
    per_worker_jobs: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    prefetched: int = 0  # mixed-run jobs dispatched while their worker ran another one
    prefetched_gaps_ms: list[float] = field(default_factory=list)

    @property
    def idle_per_job_ms(self) -> float:
        return self.idle_total * 1000 / self.jobs

    @property
    def idle_after_first_per_job_ms(self) -> float:
        return self.idle_after_first * 1000 / self.jobs

    @property
    def makespan_ratio(self) -> float:
        return self.makespan / self.greedy

    @property
    def latency_p50_ms(self) -> float:
        return percentile(self.latency_ms, 0.5)

    @property
    def latency_p99_ms(self) -> float:
        return percentile(self.latency_ms, 0.99)


async def warm_up(platform: Platform, users: list[str]) -> None:
    """One small job per worker, so every worker has loaded the model."""
    for attempt in range(5):
        cold = [w for w in platform.workers if not w.history]
        if not cold:
            return
        jobs = await submit_all(platform.app, users, [SMALL] * len(cold), f"warm{attempt}")
        await platform.until_terminal([j.job_id for j in jobs], timeout=180)
    raise RuntimeError("a worker never got a warm-up job")


async def latency_rounds(platform: Platform, users: list[str], rounds: int) -> list[JobTimes]:
    """Rounds of 1, 2, 3 small jobs submitted to idle workers; each after the last finished."""
    measured: list[JobTimes] = []
    for r in range(rounds):
        size = r % WORKERS + 1
        jobs = await submit_all(platform.app, users, [SMALL] * size, f"lat{r}")
        await platform.until_terminal([j.job_id for j in jobs], timeout=120)
        await asyncio.sleep(0.2)  # every worker's idle heartbeat is in
        measured.extend(jobs)
    return measured


async def measure(
    settings: Settings, n_jobs: int, max_steps: int, rounds: int, *, prefetch: bool
) -> Results:
    platform = Platform(settings, prefetch=prefetch)
    try:
        await platform.start(WORKERS)
        users = prepare_users(platform.app, uuid.uuid4().hex[:6])
        await warm_up(platform, users)
        latency_jobs = await latency_rounds(platform, users, rounds)
        params = mixed_jobs(n_jobs, random.Random(6), max_steps)
        first_done = len(platform.done)
        jobs = await submit_all(platform.app, users, params, "mix")
        await platform.until_terminal([j.job_id for j in jobs], timeout=900)
        await asyncio.to_thread(fill_times, platform, latency_jobs + jobs)
        mix_done = platform.done[first_done:]
    finally:
        await platform.close()

    problems = [
        f"job {j.job_id}: {j.status} at attempt {j.attempts} {j.failure}"
        for j in latency_jobs + jobs
        if j.attempts != 1 or not j.received or (j in latency_jobs and j.status != "completed")
    ]
    outcomes: dict[str, int] = {}
    for j in jobs:
        key = j.status if j.status == "completed" else f"{j.status} ({j.failure})"
        outcomes[key] = outcomes.get(key, 0) + 1
    t0 = min(j.submitted for j in jobs)
    end = max(j.completed for j in jobs)
    durations = [j.duration for j in jobs]
    occupancy = {d.job_id: d.record.total_ms / 1000 for d in mix_done}
    busy: dict[str, list[tuple[float, float]]] = {w.worker_id: [] for w in platform.workers}
    for d in mix_done:
        busy[d.worker_id].append((d.received, d.at))
    waiting = [(j.accepted, j.received) for j in jobs if j.received]
    idle_total, idle_per_worker = idle_while_waiting(busy, waiting, end)
    # The same from each worker's first job of the run on: the hand-overs, not the first
    # dispatch after the burst of submissions (which is submit -> start latency).
    first_taken = {w: min((s for s, _ in spans), default=end) for w, spans in busy.items()}
    idle_after_first, _ = idle_while_waiting(busy, waiting, end, first_taken)
    last_receipt = max((j.received for j in jobs), default=end)
    gaps = []  # per worker: Finished acked -> next dispatch received, while jobs remained
    for spans in busy.values():
        spans.sort()
        gaps += [(b[0] - a[1]) * 1000 for a, b in itertools.pairwise(spans) if b[0] <= last_receipt]
    # The hand-overs where the next job was already queued on the worker (dispatched before
    # the one before it ended): the worker's own share of the gap.
    dispatched_at = {j.job_id: j.dispatched for j in jobs}
    prefetched_gaps = []
    for worker_id in busy:
        runs = sorted((d.received, d.at, d.job_id) for d in mix_done if d.worker_id == worker_id)
        prefetched_gaps += [
            (b[0] - a[1]) * 1000
            for a, b in itertools.pairwise(runs)
            if dispatched_at.get(b[2], b[0]) < a[1]
        ]
    # Prefetched: dispatched while its worker was still busy with an earlier job.
    prefetched = sum(
        any(s < j.dispatched < e for s, e in busy.get(j.worker_id, [])) for j in jobs if j.received
    )
    return Results(
        prefetch=prefetch,
        prefetched=prefetched,
        jobs=len(jobs),
        makespan=end - t0,
        greedy=greedy_makespan(durations, WORKERS),
        greedy_occupancy=greedy_makespan(
            [occupancy.get(j.job_id, j.duration) for j in jobs], WORKERS
        ),
        lower_bound=max(sum(durations) / WORKERS, max(durations)),
        idle_total=idle_total,
        idle_after_first=idle_after_first,
        idle_per_worker=idle_per_worker,
        idle_gaps_ms=gaps,
        prefetched_gaps_ms=prefetched_gaps,
        queue_wait_ms=[(j.started - j.submitted) * 1000 for j in jobs],
        latency_ms=[(j.started - j.submitted) * 1000 - j.load_ms for j in latency_jobs],
        latency_parts_ms=[
            (
                (j.dispatched - j.submitted) * 1000,
                (j.received - j.dispatched) * 1000,
                (j.started - j.received) * 1000 - j.load_ms,
            )
            for j in latency_jobs
        ],
        outcomes=outcomes,
        mean_duration=sum(durations) / len(durations),
        per_worker_jobs={w: len(s) for w, s in busy.items()},
        problems=problems,
    )


def report(r: Results) -> None:
    for p in r.problems:
        print(f"PROBLEM: {p}")
    mode = "prefetch on" if r.prefetch else "prefetch off (baseline)"
    table = Table(
        title=f"bench.dispatch, {mode}: {WORKERS} CPU workers (tiny-sd), {r.jobs} mixed jobs"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    ratio = r.makespan / r.greedy
    table.add_row("makespan (first submit -> last job's end)", f"{r.makespan:.2f} s")
    table.add_row("greedy list schedule of the Started->end times", f"{r.greedy:.2f} s")
    table.add_row("makespan / greedy", f"{ratio:.3f} (target <= {TARGET_MAKESPAN_RATIO})")
    table.add_row("lower bound max(sum/3, longest)", f"{r.lower_bound:.2f} s")
    table.add_row(
        "greedy of worker occupancy (receipt -> Finished acked)", f"{r.greedy_occupancy:.2f} s"
    )
    table.add_row("mean job Started -> end", f"{r.mean_duration * 1000:.0f} ms")
    table.add_row("outcomes", ", ".join(f"{k}: {n}" for k, n in sorted(r.outcomes.items())))
    table.add_row(
        "jobs per worker", ", ".join(f"{w}: {n}" for w, n in sorted(r.per_worker_jobs.items()))
    )
    table.add_row("worker idle while a job waited, total", f"{r.idle_total * 1000:.0f} ms")
    table.add_row(
        "  per job",
        f"{r.idle_per_job_ms:.1f} ms (target < {TARGET_IDLE_PER_JOB_MS:.0f} ms)",
    )
    table.add_row(
        "  of which after each worker's first job, per job",
        f"{r.idle_after_first_per_job_ms:.1f} ms",
    )
    table.add_row("jobs dispatched to a busy worker (prefetched)", f"{r.prefetched} of {r.jobs}")
    queued_gaps = r.prefetched_gaps_ms
    table.add_row(
        f"  hand-over gap when the next was queued there, p50 / max ({len(queued_gaps)})",
        f"{percentile(queued_gaps, 0.5):.1f} / {max(queued_gaps, default=0):.1f} ms",
    )
    table.add_row(
        "  per worker",
        ", ".join(f"{w}: {s * 1000:.0f} ms" for w, s in sorted(r.idle_per_worker.items())),
    )
    table.add_row(
        "  hand-over gap (acked -> next received) p50 / max",
        f"{percentile(r.idle_gaps_ms, 0.5):.0f} / {max(r.idle_gaps_ms, default=0):.0f} ms",
    )
    table.add_row(
        f"submit -> start to an idle worker, p50 ({len(r.latency_ms)} jobs)",
        f"{percentile(r.latency_ms, 0.5):.1f} ms",
    )
    table.add_row(
        "submit -> start to an idle worker, p99",
        f"{percentile(r.latency_ms, 0.99):.1f} ms (target < {TARGET_LATENCY_P99_MS:.0f} ms)",
    )
    for i, part in enumerate(
        ("submit -> Dispatched recorded", "Dispatched -> worker received", "received -> Started")
    ):
        values = [p[i] for p in r.latency_parts_ms]
        table.add_row(
            f"  {part}, p50 / p99",
            f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f} ms",
        )
    table.add_row(
        "submit -> start in the makespan run (queueing), p50 / p99",
        f"{percentile(r.queue_wait_ms, 0.5):.0f} / {percentile(r.queue_wait_ms, 0.99):.0f} ms",
    )
    Console().print(table)


def compare(off: Results, on: Results) -> None:
    table = Table(title="bench.dispatch: prefetch on vs off (same run)")
    table.add_column("measure")
    table.add_column("off (baseline)", justify="right")
    table.add_column("on", justify="right")
    table.add_column("on / off", justify="right")
    table.add_column("target", justify="right")
    rows = (
        ("idle while a job waited, per job (ms)", "idle_per_job_ms", TARGET_IDLE_PER_JOB_MS),
        ("  of which after each worker's first job (ms)", "idle_after_first_per_job_ms", None),
        ("submit -> start, idle worker, p50 (ms)", "latency_p50_ms", None),
        ("submit -> start, idle worker, p99 (ms)", "latency_p99_ms", TARGET_LATENCY_P99_MS),
        ("makespan / greedy of the measured durations", "makespan_ratio", None),
    )
    for label, name, target in rows:
        a, b = getattr(off, name), getattr(on, name)
        ratio = f"{b / a:.2f}" if a else "-"
        goal = "-" if target is None else f"< {target:.0f}: {'met' if b < target else 'not met'}"
        table.add_row(label, f"{a:.3g}", f"{b:.3g}", ratio, goal)
    a, b = percentile(off.idle_gaps_ms, 0.5), percentile(on.idle_gaps_ms, 0.5)
    ratio = f"{b / a:.2f}" if a else "-"
    table.add_row("hand-over gap p50 (ms)", f"{a:.1f}", f"{b:.1f}", ratio, "-")
    Console().print(table)


async def run(quick: bool) -> None:
    quiet_logs()
    n_jobs, max_steps, rounds = (24, 16, 6) if quick else (60, 30, 24)
    retries = relay_retries()
    results: dict[bool, Results] = {}
    for prefetch in (False, True):  # the baseline first; each on a stack of its own
        async with gpu_stack("bench_dispatch") as settings:
            results[prefetch] = await measure(
                settings, n_jobs, max_steps, rounds, prefetch=prefetch
            )
        report(results[prefetch])
    off, r = results[False], results[True]
    compare(off, r)
    warn_if_disturbed(relay_retries() - retries)
    latency_ok = r.latency_p99_ms < TARGET_LATENCY_P99_MS
    idle_ok = r.idle_per_job_ms < TARGET_IDLE_PER_JOB_MS
    print(
        f"prefetch on: latency p99 {'meets' if latency_ok else 'misses'} its target; "
        f"idle while waiting {r.idle_per_job_ms:.1f} ms per job "
        f"({'meets' if idle_ok else 'misses'} its target; {off.idle_per_job_ms:.1f} ms off)"
    )
    summary(
        "dispatch",
        "s (makespan)",
        r.makespan,
        r.greedy,
        TARGET_MAKESPAN_RATIO,
        higher_is_better=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark scheduling and dispatch.")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter jobs (< 60 s)")
    asyncio.run(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
