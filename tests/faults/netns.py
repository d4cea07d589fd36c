"""A real network partition on this machine only: a network namespace joined to the host's by
a veth pair, whose link the test takes down and up again.

The namespace holds what the test partitions (a private PostgreSQL, a GPU worker); the rest
stays in the host's namespace and reaches it at the namespace's veth address. ``partition()``
sets the namespace's end of the pair down: the host's end loses its carrier but keeps its
route, so what the host sends is dropped without an answer, and the namespace's replies go
nowhere either. Nothing is refused or reset, as when a switch or a security group drops a
flow; a client learns of it only from its own timeouts. ``heal()`` sets it up again and the
same connections, if they are still open, carry on.

Addresses are link-local to the pair (a /30 in 10.213.0.0/16 per namespace); nothing leaves
the machine. Needs root and ``ip`` (iproute2).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

COMMAND_TIMEOUT_S = 10


def require_namespaces() -> None:
    """Skip (with the reason) where the test cannot make namespaces and veth pairs."""
    if os.geteuid() != 0:
        pytest.skip("a network partition needs root (network namespaces, veth pairs)")
    if shutil.which("ip") is None:
        pytest.skip("ip (iproute2) is missing")


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
    own, so that one can be partitioned and the others not), removed with its pairs at the
    end. Its processes must be stopped by then: ``ip netns del`` does not kill them."""
    require_namespaces()
    assert 1 <= links <= 4, links
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
