"""The chaos run's fault plan: replayable from its seed, and complete in every round."""

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from chaos.faults import DEPENDENCY_FAULTS, DISK_FAULTS, plan_faults

PROCESSES = ["api-1", "api-2", "relay", "project", "scheduler", "settle", "expire", "w1", "w2"]


@given(seed=st.integers(0, 2**32), rounds=st.integers(1, 4), window=st.floats(10, 1000))
def test_every_round_hits_every_process_and_dependency_inside_the_window(
    seed: int, rounds: int, window: float
) -> None:
    plan = plan_faults(seed, PROCESSES, window, rounds)
    kills = Counter(f.target for f in plan if f.kind == "kill_process")
    assert kills == {p: rounds for p in PROCESSES}
    outages = Counter(f.kind for f in plan if f.kind != "kill_process")
    assert outages == {kind: rounds for kind in DEPENDENCY_FAULTS}
    assert all(5.0 <= f.at_s <= round(window, 1) for f in plan)
    assert [f.at_s for f in plan] == sorted(f.at_s for f in plan)
    assert all(f.duration_s > 0 for f in plan if f.kind != "kill_process")
    # images exist before S3 is killed, so the verdict can show they survive it
    assert all(
        f.at_s >= min(round(window, 1), max(5.0, window / 2) - 0.05)
        for f in plan
        if f.kind == "restart_s3"
    )


def test_a_seed_replays_the_same_plan_and_another_seed_does_not() -> None:
    assert plan_faults(7, PROCESSES, 60, 2) == plan_faults(7, PROCESSES, 60, 2)
    assert plan_faults(7, PROCESSES, 60, 2) != plan_faults(8, PROCESSES, 60, 2)


@given(seed=st.integers(0, 2**32), rounds=st.integers(1, 4))
def test_the_disk_full_fault_adds_one_per_round_and_leaves_the_rest_as_it_was(
    seed: int, rounds: int
) -> None:
    plain = plan_faults(seed, PROCESSES, 60, rounds, partitions=True)
    full = plan_faults(seed, PROCESSES, 60, rounds, partitions=True, disk_full=True)
    added = [f for f in full if f.kind in DISK_FAULTS]
    assert [f for f in full if f.kind not in DISK_FAULTS] == plain
    assert Counter(f.kind for f in added) == {kind: rounds for kind in DISK_FAULTS}
    assert all(5.0 <= f.at_s <= 60 and 5 <= f.duration_s <= 15 for f in added)
