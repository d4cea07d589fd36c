"""The dispatch policy: work-conserving, fair across users, bounded per user, model-warm."""

from __future__ import annotations

from collections import Counter
from uuid import uuid4

from hypothesis import given
from hypothesis import strategies as st

from workflows.scheduler.policy import IdleWorker, QueuedJob, Turns, assign


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
