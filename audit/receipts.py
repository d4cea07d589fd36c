"""Receipts a user or an auditor checks offline: `pinksea ledger receipt` / `verify-receipt`.

A receipt states what a settled job was and cost (user, model, a hash of its parameters, its
images, GPU time, rate, charge) and carries the stored credit events that moved its money, each
with an inclusion proof into a seal (``audit/seals.py``). It is signed with Ed25519; so are the
seals it carries. ``verify_receipt`` needs only the receipt and the public key: it recomputes
every event's leaf from the bytes in the receipt, walks each proof to its seal's root, checks
both signatures, and checks that the charge the receipt states is the charge the sealed events
record. Nothing the receipt says about money rests on the issuer's word alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.chain import (
    LedgerLeaf,
    canonical,
    inclusion_proof,
    merkle_root,
    root_from_proof,
    sign,
    signature_problem,
)
from audit.seals import digests, seal_covering
from audit.store import ACCOUNT_EVENTS, JOB_EVENTS
from domain import ids
from eventstore.decoding import EVENTS_TABLE, decode

RECEIPT_VERSION = 1
SETTLED_TOPIC = "pinksea:CreditAccount.HoldSettled"
# A job's money moves in a handful of events (hold, settlement, refunds): more is corruption.
JOB_CREDIT_EVENTS_MAX = 64


class ReceiptUnavailable(Exception):
    """The job has no receipt (yet): not settled, not sealed, or the store disagrees with its
    seal. The message says which."""


@dataclass(frozen=True)
class _Row:
    leaf: LedgerLeaf
    state: dict[str, Any]


async def issue_receipt(
    conn: asyncpg.Connection, job_id: UUID, key: Ed25519PrivateKey, at: datetime
) -> dict[str, Any]:
    """The signed receipt of a settled job whose credit events are sealed."""
    job = await _job(conn, job_id)
    rows = await _credit_rows(conn, ids.account_id(job["user_id"]), str(job_id))
    settled = [r for r in rows if r.leaf.topic == SETTLED_TOPIC]
    if len(settled) != 1:
        raise ReceiptUnavailable(f"job {job_id} is not settled: it has no receipt")
    events = []
    grouped = await _by_seal(conn, rows)
    for seal, members in grouped:
        tree = await digests(conn, seal["first_position"], seal["last_position"])
        if merkle_root(tree).hex() != seal["root"]:
            raise ReceiptUnavailable(
                f"the event store no longer matches seal {seal['seq']}: its events were changed"
            )
        index_of = {d: i for i, d in enumerate(tree)}
        for row in members:
            index = index_of[row.leaf.digest()]
            events.append(
                {
                    "position": row.leaf.position,
                    "originator_id": str(row.leaf.originator_id),
                    "originator_version": row.leaf.originator_version,
                    "topic": row.leaf.topic,
                    "state": base64.b64encode(row.leaf.state).decode(),
                    "seal": seal["seq"],
                    "leaf_index": index,
                    "proof": [h.hex() for h in inclusion_proof(index, tree)],
                }
            )
    settlement = settled[0].state
    body = {
        "receipt_version": RECEIPT_VERSION,
        "job_id": str(job_id),
        "user_id": job["user_id"],
        "model": job["parameters"].get("model"),
        "parameters_sha256": hashlib.sha256(canonical(job["parameters"])).hexdigest(),
        "images": job["images"],
        "tier": settlement["tier"],
        "gpu_ms": settlement["gpu_ms"],
        "rate_mc_per_ms": settlement["rate_mc_per_ms"],
        "charged_mc": settlement["charged_mc"],
        "refunded_mc": sum(
            r.state["amount_mc"] for r in rows if r.leaf.topic.endswith(".CreditsRefunded")
        ),
        "ledger_events": events,
        "seals": {str(seal["seq"]): seal for seal, _ in grouped},
        "issued_at": at.isoformat(),
    }
    return sign(body, key)


def verify_receipt(receipt: dict[str, Any], public_key: Ed25519PublicKey) -> list[str]:
    """Why the receipt cannot be trusted; empty when every check holds. No I/O."""
    problems = []
    if (problem := signature_problem(receipt, public_key)) is not None:
        problems.append(f"receipt: {problem}")
    seals = receipt.get("seals", {})
    for seq, seal in seals.items():
        if (problem := signature_problem(seal, public_key)) is not None:
            problems.append(f"seal {seq}: {problem}")
    states: list[tuple[str, dict[str, Any]]] = []
    for event in receipt.get("ledger_events", []):
        where = f"event at position {event.get('position')}"
        seal = seals.get(str(event.get("seal")))
        if seal is None:
            problems.append(f"{where}: its seal {event.get('seal')} is not in the receipt")
            continue
        try:
            leaf = LedgerLeaf(
                position=int(event["position"]),
                originator_id=UUID(event["originator_id"]),
                originator_version=int(event["originator_version"]),
                topic=str(event["topic"]),
                state=base64.b64decode(event["state"], validate=True),
            )
            proof = [bytes.fromhex(h) for h in event["proof"]]
            state = json.loads(leaf.state)
        except (KeyError, ValueError, TypeError) as e:
            problems.append(f"{where}: malformed ({e})")
            continue
        if not seal["first_position"] < leaf.position <= seal["last_position"]:
            problems.append(f"{where}: outside seal {seal['seq']}'s range")
        root = root_from_proof(
            int(event["leaf_index"]), int(seal["leaf_count"]), leaf.digest(), proof
        )
        if root is None or root.hex() != seal["root"]:
            problems.append(
                f"{where}: not in seal {seal['seq']} (the proof does not reach its root)"
            )
        states.append((leaf.topic, state))
    problems += _money_problems(receipt, states)
    return problems


def _money_problems(receipt: dict[str, Any], states: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The receipt's figures against what its (proven) events record."""
    job_id = receipt.get("job_id")
    problems = [
        f"an event of job {state.get('job_id')} in the receipt of job {job_id}"
        for _, state in states
        if state.get("job_id") != job_id
    ]
    settled = [state for topic, state in states if topic == SETTLED_TOPIC]
    if len(settled) != 1:
        return [*problems, f"{len(settled)} settlements among the events (one expected)"]
    for name in ("charged_mc", "gpu_ms", "rate_mc_per_ms", "tier"):
        if settled[0].get(name) != receipt.get(name):
            problems.append(
                f"{name}: the receipt says {receipt.get(name)!r}, "
                f"the sealed settlement {settled[0].get(name)!r}"
            )
    refunded = sum(s["amount_mc"] for t, s in states if t.endswith(".CreditsRefunded"))
    if refunded != receipt.get("refunded_mc"):
        problems.append(
            f"refunded_mc: the receipt says {receipt.get('refunded_mc')}, events {refunded}"
        )
    return problems


async def _job(conn: asyncpg.Connection, job_id: UUID) -> dict[str, Any]:
    rows = await conn.fetch(
        f"SELECT notification_id, originator_id, originator_version, topic, state "
        f"FROM {EVENTS_TABLE} WHERE originator_id = $1 AND topic LIKE $2 "
        "ORDER BY originator_version",
        job_id,
        JOB_EVENTS,
    )
    if not rows:
        raise ReceiptUnavailable(f"there is no job {job_id}")
    job: dict[str, Any] = {"images": []}
    for row in rows:
        event = decode(row)
        if row["topic"].endswith(".Submitted"):
            job["user_id"] = event.user_id  # type: ignore[attr-defined]
            job["parameters"] = dict(event.parameters)  # type: ignore[attr-defined]
        elif row["topic"].endswith(".Completed"):
            job["images"] = [dict(i) for i in event.images]  # type: ignore[attr-defined]
    return job


async def _credit_rows(conn: asyncpg.Connection, account_id: UUID, job_id: str) -> list[_Row]:
    """The account's stored events that name the job, with their exact stored bytes."""
    # The stored state is the transcoder's JSON: the filter runs in the database, so a long
    # account history is never read for one job.
    rows = await conn.fetch(
        f"SELECT notification_id, originator_id, originator_version, topic, state "
        f"FROM {EVENTS_TABLE} WHERE originator_id = $1 AND topic LIKE $2 "
        "AND convert_from(state, 'UTF8')::jsonb ->> 'job_id' = $3 "
        "ORDER BY notification_id LIMIT $4",
        account_id,
        ACCOUNT_EVENTS,
        job_id,
        JOB_CREDIT_EVENTS_MAX + 1,
    )
    found = []
    for row in rows:
        state = json.loads(bytes(row["state"]))
        found.append(
            _Row(
                LedgerLeaf(
                    position=row["notification_id"],
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                ),
                state,
            )
        )
    assert len(found) <= JOB_CREDIT_EVENTS_MAX, f"job {job_id}: {len(found)} credit events"
    return found


async def _by_seal(
    conn: asyncpg.Connection, rows: list[_Row]
) -> list[tuple[dict[str, Any], list[_Row]]]:
    """The rows grouped by the seal that covers them; refuses rows no seal covers yet."""
    groups: dict[int, tuple[dict[str, Any], list[_Row]]] = {}
    for row in rows:
        seal = await seal_covering(conn, row.leaf.position)
        if seal is None:
            raise ReceiptUnavailable(
                f"the job's event at position {row.leaf.position} is not sealed yet: "
                "the next `pinksea ledger seal` covers it"
            )
        groups.setdefault(seal["seq"], (seal, []))[1].append(row)
    return [groups[seq] for seq in sorted(groups)]
