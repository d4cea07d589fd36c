"""The ledger's hash chain: Merkle trees over stored credit events, and Ed25519 signatures.

Pure functions, no I/O: ``audit/seals.py`` feeds them rows of the event store, and
``audit/receipts.py`` checks a receipt with them offline.

* A **leaf** is one stored credit event, hashed over exactly what the store holds (position,
  originator id and version, topic, state bytes), so a receipt's copy of an event can be
  checked byte for byte.
* A **seal** covers a contiguous range of store positions: the Merkle tree head (RFC 9162,
  section 2.1) of the credit events in that range, and the previous seal's root, so the seals
  form a chain and no range can be rewritten without breaking every later seal.
* An **inclusion proof** (RFC 9162, section 2.1.3) shows that one leaf is in a sealed tree with
  O(log n) hashes, so a receipt carries a few hundred bytes instead of the day's events.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# RFC 9162's domain separation: a leaf can never be read as an inner node.
_LEAF, _NODE = b"\x00", b"\x01"
# A tree is at most this many leaves: the proofs' length (and a seal's work) is bounded.
LEAVES_MAX = 1 << 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # the head of a tree of no leaves (RFC 9162)


@dataclass(frozen=True)
class LedgerLeaf:
    """A stored credit event as the chain hashes it."""

    position: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes

    def digest(self) -> bytes:
        assert self.position > 0 and self.originator_version > 0, self
        header = f"{self.position}\n{self.originator_id}\n{self.originator_version}\n{self.topic}\n"
        return hashlib.sha256(_LEAF + header.encode() + self.state).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    assert n > 1
    return 1 << ((n - 1).bit_length() - 1)


def merkle_root(leaves: list[bytes]) -> bytes:
    """The Merkle tree head of the leaf digests, in order."""
    assert len(leaves) <= LEAVES_MAX
    if not leaves:
        return EMPTY_ROOT
    level = leaves
    # Bottom-up pairing gives RFC 9162's tree: an odd last node rises unchanged.
    while len(level) > 1:
        paired = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def inclusion_proof(index: int, leaves: list[bytes]) -> list[bytes]:
    """The audit path of ``leaves[index]`` (RFC 9162, section 2.1.3.1)."""
    assert 0 <= index < len(leaves) <= LEAVES_MAX, (index, len(leaves))
    path: list[bytes] = []
    lo, hi = 0, len(leaves)
    # Descend from the root, remembering the sibling subtree's head at each split.
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            path.append(merkle_root(leaves[lo + k : hi]))
            hi = lo + k
        else:
            path.append(merkle_root(leaves[lo : lo + k]))
            lo += k
    path.reverse()  # leaf to root
    return path


def root_from_proof(index: int, size: int, leaf: bytes, proof: list[bytes]) -> bytes | None:
    """The tree head that ``proof`` proves ``leaf`` (at ``index`` of ``size``) to be in, or None
    when the proof cannot be one for that position (RFC 9162, section 2.1.3.2)."""
    if not 0 <= index < size <= LEAVES_MAX or len(proof) > 64:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


# --------------------------------------------------------------------------- signatures


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes a signature covers: sorted keys, no spaces, UTF-8 (what a verifier recomputes)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of the SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(document: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The document with ``key_id`` and an Ed25519 ``signature`` (hex) over the rest."""
    assert "signature" not in document
    body = {**document, "key_id": key_id(private_key.public_key())}
    return {**body, "signature": private_key.sign(canonical(body)).hex()}


def signature_problem(signed: dict[str, Any], public_key: Ed25519PublicKey) -> str | None:
    """Why ``signed`` is not signed by ``public_key`` (None: it is)."""
    body = {k: v for k, v in signed.items() if k != "signature"}
    if body.get("key_id") != key_id(public_key):
        return f"signed by key {body.get('key_id')}, not by {key_id(public_key)}"
    try:
        public_key.verify(bytes.fromhex(str(signed.get("signature", ""))), canonical(body))
    except (InvalidSignature, ValueError):
        return "the signature does not match the document"
    return None


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key
