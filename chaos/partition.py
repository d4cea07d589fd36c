"""Network partitions on this machine only, for the chaos run and the fault tests.

A network namespace is joined to the host's by veth pairs; a partition sets the namespace's end
of a pair down. The host's end keeps its route and loses its carrier, so every packet is
dropped without an answer: nothing is refused or reset, open connections go silent, as when a
security group or a switch drops a flow, and a client learns of it only from its own timeouts.
Healing sets it up again. Addresses are a /30 per pair in 10.213.0.0/16; nothing leaves the
machine. Needs root and ``ip`` (iproute2).

The stack listens on 127.0.0.1 only, which another namespace cannot reach, so its ports are
carried over the pairs by relays (chaos/relay.py), one at each end:

- :func:`detour`: a client in the host's namespace reaches a service through the namespace and
  back (a PostgreSQL URL naming the namespace's address): its own socket is across the pair.
- :func:`carry`: a process inside the namespace reaches the stack at the stack's own loopback
  addresses (Kafka's advertised address included), each group of ports over its own pair, so
  that one dependency can be partitioned and the others not.

In the chaos run (:func:`start_partitions`) the second API reaches PostgreSQL by a detour and
the first GPU worker runs inside a namespace whose Kafka pair can be taken down.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chaos.processes import Supervisor
    from chaos.stack import ChaosStack

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT_S = 10
RELAY_STOP_TIMEOUT_S = 10
MAX_LINKS = 4


def unsupported() -> str | None:
    """Why partitions cannot be made here, or None: tried with a namespace and a veth pair
    (root alone is not enough in a container without CAP_NET_ADMIN or the veth driver)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "ip (iproute2) is missing"
    try:
        with network_namespace(links=1):
            pass
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return f"cannot make a namespace and a veth pair ({e})"
    return None


def _ip(*argv: str) -> None:
    done = subprocess.run(
        ["ip", *argv], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Link:
    """One veth pair between the host's namespace and the test's."""

    host_link: str  # the host's end
    inner_link: str  # the namespace's end
    host_address: str  # the host's address on the pair
    inner_address: str  # the namespace's address on the pair


@dataclass(frozen=True)
class Namespace:
    name: str
    links: tuple[Link, ...]

    @property
    def host_address(self) -> str:
        return self.links[0].host_address

    @property
    def inner_address(self) -> str:
        return self.links[0].inner_address

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """Prefix of a command that runs inside the namespace."""
        return ("ip", "netns", "exec", self.name)

    def partition(self, link: int = 0) -> None:
        """Drop every packet between the namespace and the host on ``link``, silently."""
        _ip("-n", self.name, "link", "set", self.links[link].inner_link, "down")

    def heal(self, link: int = 0) -> None:
        _ip("-n", self.name, "link", "set", self.links[link].inner_link, "up")


@contextlib.contextmanager
def network_namespace(links: int = 1) -> Iterator[Namespace]:
    """A fresh namespace joined to the host's by ``links`` veth pairs (each on a /30 of its
    own), removed with its pairs at the end. Its processes must be stopped by then: ``ip netns
    del`` does not kill them."""
    assert 1 <= links <= MAX_LINKS, links
    tag = uuid.uuid4().hex[:8]
    first = int(tag[:4], 16) % (16384 - links)  # /30s in the /16: 16384 of them
    pairs = []
    for n in range(links):
        base = (first + n) * 4
        prefix = f"10.213.{base // 256}"
        pairs.append(
            Link(
                f"pkh{tag}{n}",
                f"pkn{tag}{n}",
                f"{prefix}.{base % 256 + 1}",
                f"{prefix}.{base % 256 + 2}",
            )
        )
    ns = Namespace(f"pinksea-{tag}", tuple(pairs))
    _ip("netns", "add", ns.name)
    try:
        _ip("-n", ns.name, "link", "set", "lo", "up")
        for link in ns.links:
            _ip("link", "add", link.host_link, "type", "veth", "peer", "name", link.inner_link)
            _ip("link", "set", link.inner_link, "netns", ns.name)
            _ip("addr", "add", f"{link.host_address}/30", "dev", link.host_link)
            _ip("link", "set", link.host_link, "up")
            _ip("-n", ns.name, "addr", "add", f"{link.inner_address}/30", "dev", link.inner_link)
            _ip("-n", ns.name, "link", "set", link.inner_link, "up")
        yield ns
    finally:
        for link in ns.links:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _ip("link", "del", link.host_link)  # takes its peer with it
        _ip("netns", "del", ns.name)


@contextlib.contextmanager
def relay(mappings: list[str], prefix: tuple[str, ...] = ()) -> Iterator[None]:
    """``python -m chaos.relay`` with ``mappings`` (LISTEN=TARGET), its command prefixed by
    ``prefix`` (a namespace's), until the block ends."""
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "chaos.relay", *mappings],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"the relay {mappings} did not start")
        yield
    finally:
        process.kill()
        process.wait(timeout=RELAY_STOP_TIMEOUT_S)


@contextlib.contextmanager
def detour(ns: Namespace, link: int, target: tuple[str, int]) -> Iterator[tuple[str, int]]:
    """The address at which a client of the host's namespace reaches ``target`` (a service on
    the host's loopback) through ``ns`` and back, across ``link``."""
    pair = ns.links[link]
    host, port = target
    with (
        relay([f"{pair.host_address}:{port}={host}:{port}"]),
        relay([f"{pair.inner_address}:{port}={pair.host_address}:{port}"], ns.exec_prefix),
    ):
        yield pair.inner_address, port


@contextlib.contextmanager
def carry(ns: Namespace, groups: dict[int, list[tuple[str, int]]]) -> Iterator[None]:
    """Inside ``ns``, each address of ``groups[link]`` (the stack's, on loopback) answers as on
    the host: relayed over that link to the same address in the host's namespace."""
    outside, inside = [], []
    for link, addresses in groups.items():
        pair = ns.links[link]
        for host, port in addresses:
            outside.append(f"{pair.host_address}:{port}={host}:{port}")
            inside.append(f"{host}:{port}={pair.host_address}:{port}")
    with relay(outside), relay(inside, ns.exec_prefix):
        yield


# --------------------------------------------------------------------------- the chaos run

#: Each partition of the chaos run: the process cut off, and from which dependency.
PARTITIONED = {
    "partition_api_postgres": ("api-2", "postgres"),
    "partition_worker_kafka": ("gpu-worker-1", "kafka"),
}
_KAFKA_LINK, _OTHER_LINK = 0, 1


@dataclass
class ChaosPartitions:
    """The chaos run's namespaces: the second API's detour to PostgreSQL, and the first GPU
    worker's namespace (Kafka on one pair, Redis and S3 on another)."""

    links: dict[str, tuple[Namespace, int]]  # fault kind -> the namespace and its pair
    _exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def partition(self, kind: str) -> None:
        ns, link = self.links[kind]
        ns.partition(link)

    def heal(self, kind: str) -> None:
        ns, link = self.links[kind]
        ns.heal(link)

    def close(self) -> None:
        self._exit.close()


def start_partitions(stack: ChaosStack, supervisor: Supervisor) -> ChaosPartitions:
    """Make the namespaces and route the partitioned processes through them (before the
    supervisor starts them): api-2 reaches PostgreSQL at the detour's address, gpu-worker-1
    runs inside its namespace."""
    exit_stack = contextlib.ExitStack()
    try:
        api_ns = exit_stack.enter_context(network_namespace(links=1))
        host, port = exit_stack.enter_context(detour(api_ns, 0, ("127.0.0.1", stack.pg_port)))
        api = supervisor.child(PARTITIONED["partition_api_postgres"][0])
        api.env = {
            **supervisor.env,
            "PINKSEA_DATABASE_URL": stack.database_url.replace(
                f"127.0.0.1:{stack.pg_port}", f"{host}:{port}"
            ),
        }
        worker_ns = exit_stack.enter_context(network_namespace(links=2))
        exit_stack.enter_context(
            carry(
                worker_ns,
                {
                    _KAFKA_LINK: [("127.0.0.1", stack.kafka_port)],
                    _OTHER_LINK: [("127.0.0.1", stack.redis_port), ("127.0.0.1", stack.s3_port)],
                },
            )
        )
        supervisor.child(PARTITIONED["partition_worker_kafka"][0]).wrap = worker_ns.exec_prefix
    except BaseException:
        exit_stack.close()
        raise
    return ChaosPartitions(
        {
            "partition_api_postgres": (api_ns, 0),
            "partition_worker_kafka": (worker_ns, _KAFKA_LINK),
        },
        exit_stack,
    )
