"""The ledger chain's Merkle trees against RFC 9162's own recursive definitions (hypothesis)."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from audit.chain import EMPTY_ROOT, inclusion_proof, merkle_root, root_from_proof


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162, 2.1.1: split at the largest power of two smaller than n."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162, 2.1.3.1."""
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(b"\x00" + i.to_bytes(8, "big")).digest() for i in range(n)]


@given(st.integers(min_value=0, max_value=300))
def test_the_root_is_rfc_9162s_tree_head(n: int) -> None:
    assert merkle_root(_leaves(n)) == _mth(_leaves(n))
    assert merkle_root([]) == EMPTY_ROOT


@given(
    st.integers(min_value=1, max_value=300).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(0, n - 1))
    )
)
def test_every_leaf_proves_into_the_root_and_nothing_else_does(case: tuple[int, int]) -> None:
    n, index = case
    leaves = _leaves(n)
    root = merkle_root(leaves)
    proof = inclusion_proof(index, leaves)
    assert proof == _path(index, leaves)
    assert root_from_proof(index, n, leaves[index], proof) == root
    forged = hashlib.sha256(leaves[index]).digest()
    assert root_from_proof(index, n, forged, proof) != root
    if n > 1:
        other = (index + 1) % n
        assert root_from_proof(other, n, leaves[index], proof) != root
    assert root_from_proof(index, index, leaves[index], proof) is None  # index past the size
