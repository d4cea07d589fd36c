"""The chaos run's network partitions: in the plan where namespaces can be made, without
changing a seed's other faults; and the chaos detour really partitions (root)."""

from __future__ import annotations

import socket
from collections import Counter
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaos.faults import PARTITION_FAULTS, plan_faults
from chaos.partition import PARTITIONED, detour
from infra.settings import Settings
from tests.faults.netns import network_namespace

PROCESSES = ["api-1", "api-2", "relay", "settle", "gpu-worker-1", "gpu-worker-2"]


@given(seed=st.integers(0, 2**32), rounds=st.integers(1, 4), window=st.floats(10, 1000))
def test_each_round_partitions_each_pair_once_and_the_rest_of_the_plan_is_the_seeds(
    seed: int, rounds: int, window: float
) -> None:
    without = plan_faults(seed, PROCESSES, window, rounds)
    plan = plan_faults(seed, PROCESSES, window, rounds, partitions=True)
    partitions = [f for f in plan if f.kind in PARTITION_FAULTS]
    assert Counter(f.kind for f in partitions) == {kind: rounds for kind in PARTITION_FAULTS}
    assert [f for f in plan if f.kind not in PARTITION_FAULTS] == without
    assert all(5 <= f.duration_s <= 20 and 5.0 <= f.at_s <= round(window, 1) for f in partitions)
    assert [f.at_s for f in plan] == sorted(f.at_s for f in plan)
    # The partitioned processes are the run's (chaos/processes.py names them).
    assert {process for process, _ in PARTITIONED.values()} <= set(PROCESSES)


@pytest.mark.integration
def test_a_detour_goes_silent_when_partitioned_and_resumes_when_healed(
    stack_settings: Settings,
) -> None:
    # The chaos run's second API reaches PostgreSQL this way; Redis answers a line to a line.
    redis = urlsplit(stack_settings.redis_url)
    target = (redis.hostname or "127.0.0.1", redis.port or 6379)
    with (
        network_namespace() as ns,
        detour(ns, 0, target) as address,
        socket.create_connection(address, timeout=5) as conn,
    ):
        conn.sendall(b"PING\r\n")
        assert conn.recv(64) == b"+PONG\r\n"
        ns.partition()
        conn.sendall(b"PING\r\n")
        conn.settimeout(2)
        try:
            answered = conn.recv(64)
        except TimeoutError:
            answered = b""
        ns.heal()
        assert answered == b"", "an answer across the partition"
        conn.settimeout(15)
        assert conn.recv(64) == b"+PONG\r\n"  # the same connection, after the heal
