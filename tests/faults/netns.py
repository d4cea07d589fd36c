"""Network partitions for the fault tests: chaos/partition.py's namespaces and veth pairs,
skipped (with the reason) where they cannot be made."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from chaos.partition import Link, Namespace, carry, unsupported
from chaos.partition import network_namespace as _network_namespace

__all__ = ["Link", "Namespace", "carry", "network_namespace", "require_namespaces"]


def require_namespaces() -> None:
    """Skip where the test cannot make namespaces and veth pairs."""
    reason = unsupported()
    if reason is not None:
        pytest.skip(f"a network partition: {reason}")


@contextlib.contextmanager
def network_namespace(links: int = 1) -> Iterator[Namespace]:
    """A namespace joined to the host's by ``links`` veth pairs (chaos/partition.py)."""
    require_namespaces()
    with _network_namespace(links) as ns:
        yield ns
