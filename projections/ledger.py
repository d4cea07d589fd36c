"""Projection "ledger": balances, credit lots, statement lines and double-entry postings.

Each credit event becomes one ``LedgerChange`` (how it moves each lot, the lot it creates, the
statement line), computed in Python from the domain event, plus the domain's own postings.
One SQL statement applies all of it: the balance, the lots, the line with its running balance
(read back from the balance update) and the postings. Money events all share that statement,
so a batch of them is one pipelined ``executemany``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from domain.credits import CreditAccount, LotSource
from domain.postings import Posting, postings_for
from domain.units import format_credits
from eventstore.decoding import UnknownEventType, domain_event
from eventstore.envelope import Envelope
from infra.topics import CREDITS_TOPIC
from projections.batching import Statement, StatementProjection


class UnknownAccount(Exception):
    """A credit event for an account whose Opened event was never projected."""


@dataclass(frozen=True, slots=True)
class LotMove:
    """Signed changes to one lot's parts; ``closes`` marks the lot's expiry event."""

    lot_id: str
    remaining_mc: int = 0
    held_mc: int = 0
    consumed_mc: int = 0
    expired_mc: int = 0
    debited_mc: int = 0
    refunded_mc: int = 0
    closes: bool = False


@dataclass(frozen=True, slots=True)
class NewLot:
    lot_id: str
    source: str
    amount_mc: int
    valid_from: datetime
    valid_until: datetime | None
    reference: str
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class LedgerChange:
    """What one credit event does to the user's lots, balance and statement."""

    kind: str  # statement line kind: grant | reserve | settle | release | expire | adjust | refund
    description: str
    job_id: str | None = None
    moves: tuple[LotMove, ...] = ()
    new_lot: NewLot | None = None
    lot_id: str | None = None  # the lot a statement line is about, if one

    def total(self, part: str) -> int:
        return sum(getattr(m, part) for m in self.moves)

    @property
    def new_credit_mc(self) -> int:
        return 0 if self.new_lot is None else self.new_lot.amount_mc

    @property
    def available_mc(self) -> int:
        return self.total("remaining_mc") + self.new_credit_mc

    @property
    def granted_mc(self) -> int:
        """New credit from outside: grants and positive adjustments (not refund lots)."""
        lot = self.new_lot
        return 0 if lot is None or lot.source == LotSource.REFUND.value else lot.amount_mc

    @property
    def refunded_mc(self) -> int:
        """Charges given back: to their lots, or as a new refund lot when those expired."""
        return self.total("refunded_mc") + self.new_credit_mc - self.granted_mc


def ledger_change(ev: Any) -> LedgerChange:
    """The lot movements of one CreditAccount event (Opened excluded), mirroring the
    aggregate's ``@event`` bodies."""
    match ev:
        case CreditAccount.CreditsGranted():
            return LedgerChange(
                kind="grant",
                description=f"{format_credits(ev.amount_mc)} credits granted "
                f"({ev.source}): {ev.reason}",
                new_lot=NewLot(
                    ev.lot_id,
                    ev.source,
                    ev.amount_mc,
                    ev.valid_from,
                    ev.valid_until,
                    ev.reference,
                    ev.actor,
                    ev.reason,
                ),
                lot_id=ev.lot_id,
            )
        case CreditAccount.CreditsReserved():
            return LedgerChange(
                kind="reserve",
                description=f"{format_credits(ev.amount_mc)} credits held for job {ev.job_id}",
                job_id=ev.job_id,
                moves=tuple(
                    LotMove(a["lot_id"], remaining_mc=-a["mc"], held_mc=a["mc"])
                    for a in ev.allocations
                ),
            )
        case CreditAccount.HoldSettled():
            moves = tuple(
                LotMove(
                    p["lot_id"],
                    remaining_mc=p["released_mc"],
                    held_mc=-(p["charged_mc"] + p["released_mc"] + p["expired_mc"]),
                    consumed_mc=p["charged_mc"],
                    expired_mc=p["expired_mc"],
                )
                for p in ev.parts
            )
            released = sum(m.remaining_mc for m in moves)
            expired = sum(m.expired_mc for m in moves)
            description = (
                f"Job {ev.job_id}: {format_credits(ev.charged_mc)} credits charged for "
                f"{ev.gpu_ms} GPU-ms, {format_credits(released)} released"
            )
            if expired:
                description += f", {format_credits(expired)} expired with their lot"
            return LedgerChange(
                kind="settle", description=description, job_id=ev.job_id, moves=moves
            )
        case CreditAccount.HoldReleased():
            moves = tuple(
                LotMove(
                    p["lot_id"],
                    remaining_mc=p["released_mc"],
                    held_mc=-(p["released_mc"] + p["expired_mc"]),
                    expired_mc=p["expired_mc"],
                )
                for p in ev.parts
            )
            held = -sum(m.held_mc for m in moves)
            description = (
                f"Job {ev.job_id}: hold of {format_credits(held)} credits released ({ev.reason})"
            )
            expired = sum(m.expired_mc for m in moves)
            if expired:
                description += f", {format_credits(expired)} expired with their lot"
            return LedgerChange(
                kind="release", description=description, job_id=ev.job_id, moves=moves
            )
        case CreditAccount.LotExpired():
            return LedgerChange(
                kind="expire",
                description=f"{format_credits(ev.expired_mc)} unspent credits expired",
                moves=(
                    LotMove(
                        ev.lot_id,
                        remaining_mc=-ev.expired_mc,
                        expired_mc=ev.expired_mc,
                        closes=True,
                    ),
                ),
                lot_id=ev.lot_id,
            )
        case CreditAccount.CreditsAdjusted():
            new_lot = None
            if ev.new_lot is not None:
                new_lot = NewLot(
                    ev.new_lot["lot_id"],
                    LotSource.ADMIN.value,
                    ev.new_lot["mc"],
                    ev.new_lot["valid_from"],
                    ev.new_lot["valid_until"],
                    f"adjustment:{ev.adjustment_id}",  # as CreditAccount._adjusted
                    ev.actor,
                    ev.reason,
                )
            sign = "+" if ev.amount_mc > 0 else ""
            return LedgerChange(
                kind="adjust",
                description=f"Adjustment of {sign}{format_credits(ev.amount_mc)} credits "
                f"by {ev.actor}: {ev.reason}",
                moves=tuple(
                    LotMove(d["lot_id"], remaining_mc=-d["mc"], debited_mc=d["mc"])
                    for d in ev.debits
                ),
                new_lot=new_lot,
                lot_id=None if new_lot is None else new_lot.lot_id,
            )
        case CreditAccount.CreditsRefunded():
            new_lot = None
            if ev.new_lot is not None:
                new_lot = NewLot(
                    ev.new_lot["lot_id"],
                    LotSource.REFUND.value,
                    ev.new_lot["mc"],
                    ev.new_lot["valid_from"],
                    ev.new_lot["valid_until"],
                    f"refund:{ev.hold_id}",  # as CreditAccount._refunded
                    ev.actor,
                    ev.reason,
                )
            return LedgerChange(
                kind="refund",
                description=f"Job {ev.job_id}: {format_credits(ev.amount_mc)} credits "
                f"refunded by {ev.actor}: {ev.reason}",
                job_id=ev.job_id,
                moves=tuple(
                    LotMove(r["lot_id"], remaining_mc=r["mc"], refunded_mc=r["mc"])
                    for r in ev.returns
                ),
                new_lot=new_lot,
                lot_id=None if new_lot is None else new_lot.lot_id,
            )
    raise UnknownEventType(type(ev).__qualname__)


def postings_for_envelope(user_id: str, env: Envelope) -> list[Posting]:
    """The domain's double-entry postings of one credit envelope."""
    return postings_for(user_id, domain_event(env))


_OPEN = """
INSERT INTO balances (user_id, account_id, opened_at, updated_at, position)
VALUES ($1, $2, $3, $3, $4)
"""

_OWNERS = "SELECT account_id, user_id FROM balances WHERE account_id = ANY($1::uuid[])"

# Low-balance warnings move no money: they only flag the balance (the API shows a banner).
_LOW_BALANCE = """
WITH flagged AS (
    UPDATE balances SET low_balance = $2, low_balance_threshold_mc = $3, updated_at = $4,
        position = $5
    WHERE account_id = $1
    RETURNING 1
)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM flagged), 'credit account ' || $1::text || ' was never opened'
)
"""

# Deactivation moves no money either: it flags the account (the API refuses its requests).
_ACCOUNT_STATUS = """
WITH flagged AS (
    UPDATE balances SET deactivated = $2, status_version = $3, status_reason = $4,
        status_actor = $5, status_changed_at = $6, updated_at = $6, position = $7
    WHERE account_id = $1
    RETURNING 1
)
SELECT read_model_check(
    EXISTS (SELECT 1 FROM flagged), 'credit account ' || $1::text || ' was never opened'
)
"""

# $1 user  $2 event id  $3 position  $4 occurred_at  $5 job id
# $6..$13  balance deltas: available, held, granted, consumed, refunded, expired, debited, lots
# $14..$21 lot moves (parallel arrays)
# $22..$29 the new lot (NULL lot id: none)
# $30..$33 statement line: kind, lot id, description, whether there is one
# $34..$36 postings (parallel arrays)
_APPLY = """
WITH balance AS (
    UPDATE balances SET
        available_mc = available_mc + $6, held_mc = held_mc + $7,
        granted_mc = granted_mc + $8, consumed_mc = consumed_mc + $9,
        refunded_mc = refunded_mc + $10, expired_mc = expired_mc + $11,
        debited_mc = debited_mc + $12, lot_count = lot_count + $13,
        updated_at = $4, position = $3
    WHERE user_id = $1
    RETURNING available_mc, held_mc, lot_count
),
moved AS (
    UPDATE credit_lots AS l SET
        remaining_mc = l.remaining_mc + m.remaining_mc,
        held_mc = l.held_mc + m.held_mc,
        consumed_mc = l.consumed_mc + m.consumed_mc,
        expired_mc = l.expired_mc + m.expired_mc,
        debited_mc = l.debited_mc + m.debited_mc,
        refunded_mc = l.refunded_mc + m.refunded_mc,
        expired = l.expired OR m.closes,
        position = $3
    FROM unnest(
        $14::text[], $15::bigint[], $16::bigint[], $17::bigint[],
        $18::bigint[], $19::bigint[], $20::bigint[], $21::boolean[]
    ) AS m(lot_id, remaining_mc, held_mc, consumed_mc, expired_mc, debited_mc, refunded_mc, closes)
    WHERE l.user_id = $1 AND l.lot_id = m.lot_id
    RETURNING 1
),
new_lot AS (
    INSERT INTO credit_lots (
        user_id, lot_id, seq, source, amount_mc, remaining_mc, valid_from, valid_until,
        reference, actor, reason, granted_at, created_position, position
    )
    SELECT $1, $22, balance.lot_count - 1, $23, $24, $24, $25, $26, $27, $28, $29, $4, $3, $3
    FROM balance WHERE $22::text IS NOT NULL
),
line AS (
    INSERT INTO credit_transactions (
        event_id, user_id, position, occurred_at, kind, job_id, lot_id, amount_mc,
        held_change_mc, available_after_mc, held_after_mc, description
    )
    SELECT $2, $1, $3, $4, $30, $5, $31, $6, $7, balance.available_mc, balance.held_mc, $32
    FROM balance WHERE $33
),
posted AS (
    INSERT INTO postings (
        event_id, seq, user_id, position, occurred_at, account, amount_mc, lot_id, job_id
    )
    SELECT $2, p.seq, $1, $3, $4, p.account, p.amount_mc, p.lot_id, $5
    FROM unnest($34::text[], $35::bigint[], $36::text[])
        WITH ORDINALITY AS p(account, amount_mc, lot_id, seq)
)
SELECT read_model_check(
    (SELECT count(*) FROM balance) = 1
        AND (SELECT count(*) FROM moved) = cardinality($14::text[]),
    'event ' || $2 || ' moves credit of an account or a lot never projected'
)
"""


class _Owners:
    """account id -> user id, cached. The account id is derived from the user id
    (domain.ids.account_id), so an entry can never become wrong, even across rebuilds."""

    MAX_ENTRIES = 100_000

    def __init__(self) -> None:
        self._users: dict[UUID, str] = {}

    def __getitem__(self, account_id: UUID) -> str:
        return self._users[account_id]

    async def load(self, conn: asyncpg.Connection, envs: Sequence[Envelope]) -> None:
        """Know the owner of every account in ``envs``: from their Opened events, the cache,
        or one query."""
        if len(self._users) > self.MAX_ENTRIES:
            self._users.clear()
        unknown: set[UUID] = set()
        for env in envs:
            if env.type == "CreditAccount.Opened":
                self._users[env.aggregate_id] = env.data["user_id"]
            elif env.aggregate_id not in self._users:
                unknown.add(env.aggregate_id)
        if not unknown:
            return
        for row in await conn.fetch(_OWNERS, list(unknown)):
            self._users[row["account_id"]] = row["user_id"]
        missing = unknown - self._users.keys()
        if missing:
            raise UnknownAccount(f"credit accounts never opened: {sorted(map(str, missing))}")


class LedgerProjection(StatementProjection):
    name = "ledger"
    topics = (CREDITS_TOPIC,)
    tables = ("balances", "credit_lots", "credit_transactions", "postings")

    def __init__(self) -> None:
        self._owners = _Owners()

    def wants(self, env: Envelope) -> bool:
        return env.aggregate_type == "CreditAccount"

    async def prepare(self, conn: asyncpg.Connection, envs: Sequence[Envelope]) -> None:
        await self._owners.load(conn, envs)

    def statements(self, env: Envelope) -> list[Statement]:
        ev = domain_event(env)
        if isinstance(ev, CreditAccount.Opened):
            return [(_OPEN, (ev.user_id, env.aggregate_id, env.occurred_at, env.position))]
        if isinstance(ev, CreditAccount.LowBalanceReached | CreditAccount.LowBalanceCleared):
            reached = isinstance(ev, CreditAccount.LowBalanceReached)
            args = (env.aggregate_id, reached, ev.threshold_mc, env.occurred_at, env.position)
            return [(_LOW_BALANCE, args)]
        if isinstance(ev, CreditAccount.Deactivated | CreditAccount.Reactivated):
            deactivated = isinstance(ev, CreditAccount.Deactivated)
            args = (
                env.aggregate_id,
                deactivated,
                env.version,
                ev.reason,
                ev.actor,
                env.occurred_at,
                env.position,
            )
            return [(_ACCOUNT_STATUS, args)]
        user_id = self._owners[env.aggregate_id]
        change = ledger_change(ev)
        postings = postings_for(user_id, ev)
        lot, moves = change.new_lot, change.moves
        return [
            (
                _APPLY,
                (
                    user_id,
                    env.id,
                    env.position,
                    env.occurred_at,
                    change.job_id,
                    change.available_mc,
                    change.total("held_mc"),
                    change.granted_mc,
                    change.total("consumed_mc"),
                    change.refunded_mc,
                    change.total("expired_mc"),
                    change.total("debited_mc"),
                    0 if lot is None else 1,
                    [m.lot_id for m in moves],
                    [m.remaining_mc for m in moves],
                    [m.held_mc for m in moves],
                    [m.consumed_mc for m in moves],
                    [m.expired_mc for m in moves],
                    [m.debited_mc for m in moves],
                    [m.refunded_mc for m in moves],
                    [m.closes for m in moves],
                    None if lot is None else lot.lot_id,
                    None if lot is None else lot.source,
                    None if lot is None else lot.amount_mc,
                    None if lot is None else lot.valid_from,
                    None if lot is None else lot.valid_until,
                    None if lot is None else lot.reference,
                    None if lot is None else lot.actor,
                    None if lot is None else lot.reason,
                    change.kind,
                    change.lot_id,
                    change.description,
                    bool(postings),  # a statement line only for events that move money
                    [p.account for p in postings],
                    [p.amount_mc for p in postings],
                    [p.lot_id for p in postings],
                ),
            )
        ]
