"""The dispatch policy: work-conserving, fair across users, bounded per user, model-warm; busy
workers' prefetch slots filled only after the idle workers, counted against the same limits."""

from __future__ import annotations

from collections import Counter
from uuid import uuid4

from hypothesis import given
from hypothesis import strategies as st

from workflows.scheduler.policy import IdleWorker, PrefetchSlot, QueuedJob, Turns, assign


def jobs(
    user: str, n: int, start: int = 0, model: str = "sd-1.5", tier: str = "basic"
) -> list[QueuedJob]:
    return [QueuedJob(uuid4(), user, tier, model, start + i) for i in range(n)]


def test_users_take_turns_even_when_one_queued_first() -> None:
    queue = jobs("alice", 10, start=0) + jobs("bob", 2, start=100)
    turns = Turns()
    served = []
    for _ in range(4):  # one worker frees up at a time
        [a] = assign(queue, [IdleWorker("w", "basic")], {}, {"alice": 1, "bob": 1}, turns)
        served.append(a.job.user_id)
        queue = [j for j in queue if j.job_id != a.job.job_id]
    assert served == ["alice", "bob", "alice", "bob"]


def test_per_user_limit_and_work_conservation() -> None:
    queue = jobs("alice", 5) + jobs("bob", 1, start=10)
    workers = [IdleWorker(f"w{i}", "basic") for i in range(4)]
    out = assign(queue, workers, {"alice": 1}, {"alice": 2, "bob": 1}, Turns())
    per_user = Counter(a.job.user_id for a in out)
    assert per_user == {"alice": 1, "bob": 1}  # alice already runs one of her two
    assert len({a.worker_id for a in out}) == 2


def test_prefers_a_worker_that_holds_the_model_and_respects_tiers() -> None:
    queue = jobs("u", 1, model="sdxl-base-1.0") + jobs("v", 1, tier="high_performance", start=5)
    workers = [
        IdleWorker("cold", "basic"),
        IdleWorker("warm", "basic", frozenset({"sdxl-base-1.0"})),
        IdleWorker("hp", "high_performance"),
    ]
    out = {
        a.job.user_id: a.worker_id for a in assign(queue, workers, {}, {"u": 1, "v": 1}, Turns())
    }
    assert out == {"u": "warm", "v": "hp"}


@given(
    queued=st.lists(
        st.tuples(st.sampled_from("abcde"), st.sampled_from(["basic", "dedicated"])), max_size=30
    ),
    n_workers=st.integers(0, 6),
    limits=st.dictionaries(st.sampled_from("abcde"), st.integers(1, 3)),
    running=st.dictionaries(st.sampled_from("abcde"), st.integers(0, 3)),
)
def test_invariants(queued, n_workers, limits, running) -> None:
    queue = [QueuedJob(uuid4(), u, t, "m", i) for i, (u, t) in enumerate(queued)]
    workers = [IdleWorker(f"w{i}", "basic" if i % 2 else "dedicated") for i in range(n_workers)]
    out = assign(queue, workers, running, limits, Turns())
    assert len({a.worker_id for a in out}) == len(out)  # one job per worker
    assert len({a.job.job_id for a in out}) == len(out)  # a job goes out once
    tier_of = {w.worker_id: w.tier for w in workers}
    assert all(tier_of[a.worker_id] == a.job.tier for a in out)
    after = Counter(running) + Counter(a.job.user_id for a in out)
    assert all(after[a.job.user_id] <= limits.get(a.job.user_id, 1) for a in out)
    # Work-conserving: an idle worker is left only if no job of its tier is eligible.
    used = {a.worker_id for a in out}
    assigned = {a.job.job_id for a in out}
    for w in workers:
        if w.worker_id in used:
            continue
        for j in queue:
            if j.tier == w.tier and j.job_id not in assigned:
                assert after[j.user_id] >= limits.get(j.user_id, 1)


def test_prefetch_slots_fill_after_the_idle_workers_soonest_free_first() -> None:
    queue = jobs("alice", 4) + jobs("bob", 4, start=10)
    idle = [IdleWorker("idle", "basic")]
    slots = [
        PrefetchSlot("late", "basic", frees_in_ms=9000),
        PrefetchSlot("soon", "basic", frees_in_ms=200),
        PrefetchSlot("other-tier", "dedicated", frees_in_ms=0),
    ]
    limits = {"alice": 2, "bob": 2}
    out = assign(queue, idle, {}, limits, Turns(), slots)
    # The idle worker first (the oldest job), then the slot that frees first; users alternate.
    assert [(a.job.user_id, a.worker_id) for a in out] == [
        ("alice", "idle"),
        ("bob", "soon"),
        ("alice", "late"),
    ]


def test_a_prefetched_job_counts_against_its_users_limit() -> None:
    queue = jobs("alice", 3)
    slots = [PrefetchSlot(f"s{i}", "basic") for i in range(3)]
    # Alice runs one job of her two: one more may go out, to a slot, and no more.
    out = assign(queue, [], {"alice": 1}, {"alice": 2}, Turns(), slots)
    assert len(out) == 1
    assert assign(queue, [], {"alice": 2}, {"alice": 2}, Turns(), slots) == []


@given(
    queued=st.lists(
        st.tuples(st.sampled_from("abcde"), st.sampled_from(["basic", "dedicated"])), max_size=30
    ),
    n_idle=st.integers(0, 4),
    slot_frees_ms=st.lists(st.integers(0, 10_000), max_size=5),
    limits=st.dictionaries(st.sampled_from("abcde"), st.integers(1, 3)),
    running=st.dictionaries(st.sampled_from("abcde"), st.integers(0, 3)),
)
def test_invariants_with_prefetch(queued, n_idle, slot_frees_ms, limits, running) -> None:
    queue = [QueuedJob(uuid4(), u, t, "m", i) for i, (u, t) in enumerate(queued)]
    idle = [IdleWorker(f"w{i}", "basic" if i % 2 else "dedicated") for i in range(n_idle)]
    slots = [
        PrefetchSlot(f"p{i}", "dedicated" if i % 2 else "basic", frees_in_ms=ms)
        for i, ms in enumerate(slot_frees_ms)
    ]
    out = assign(queue, idle, running, limits, Turns(), slots)
    everyone: list[IdleWorker | PrefetchSlot] = [*idle, *slots]
    assert len({a.worker_id for a in out}) == len(out)  # one job per worker or slot
    assert len({a.job.job_id for a in out}) == len(out)  # a job goes out once
    tier_of = {w.worker_id: w.tier for w in everyone}
    assert all(tier_of[a.worker_id] == a.job.tier for a in out)
    # Bounded: prefetched jobs count against a user's limit like running ones.
    after = Counter(running) + Counter(a.job.user_id for a in out)
    assert all(after[a.job.user_id] <= limits.get(a.job.user_id, 1) for a in out)
    used = {a.worker_id for a in out}
    for tier in ("basic", "dedicated"):
        tier_slots = [s for s in slots if s.tier == tier]
        if any(s.worker_id in used for s in tier_slots):
            # Idle workers first: a slot is filled only once every idle worker has a job.
            assert all(w.worker_id in used for w in idle if w.tier == tier)
            # Soonest first: no used slot frees later than an unused one.
            used_ms = [s.frees_in_ms for s in tier_slots if s.worker_id in used]
            unused_ms = [s.frees_in_ms for s in tier_slots if s.worker_id not in used]
            assert not unused_ms or max(used_ms) <= min(unused_ms)
    # Unchanged for the idle workers: they get exactly what they would get with no slots.
    idle_ids = {w.worker_id for w in idle}
    without = assign(queue, idle, running, limits, Turns())
    assert [a for a in out if a.worker_id in idle_ids] == without
    # Work-conserving over both: a worker or slot is left only if no job of its tier is
    # eligible.
    assigned = {a.job.job_id for a in out}
    for w in everyone:
        if w.worker_id in used:
            continue
        for j in queue:
            if j.tier == w.tier and j.job_id not in assigned:
                assert after[j.user_id] >= limits.get(j.user_id, 1)
