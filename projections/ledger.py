"""Projection "ledger": balances, credit lots, statement lines and double-entry postings.

Each credit event becomes the domain's ``LedgerChange`` (domain.ledger_changes: how it moves
each lot, the lot it creates, the statement line) plus the domain's own postings.
One SQL statement applies all of it: the balance, the lots, the line with its running balance
(read back from the balance update) and the postings. Money events all share that statement,
so a batch of them is one pipelined ``executemany``.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg

from domain.credits import CreditAccount
from domain.ledger_changes import ledger_change
from domain.postings import Posting, postings_for
from eventstore.decoding import UnknownEventType, domain_event
from eventstore.envelope import Envelope
from infra.topics import CREDITS_TOPIC
from projections.batching import Statement, StatementProjection


class UnknownAccount(Exception):
    """A credit event for an account whose Opened event was never projected."""


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
            flag = (env.aggregate_id, reached, ev.threshold_mc, env.occurred_at, env.position)
            return [(_LOW_BALANCE, flag)]
        if isinstance(ev, CreditAccount.Deactivated | CreditAccount.Reactivated):
            deactivated = isinstance(ev, CreditAccount.Deactivated)
            status = (
                env.aggregate_id,
                deactivated,
                env.version,
                ev.reason,
                ev.actor,
                env.occurred_at,
                env.position,
            )
            return [(_ACCOUNT_STATUS, status)]
        user_id = self._owners[env.aggregate_id]
        change = ledger_change(ev)
        if change is None:
            raise UnknownEventType(type(ev).__qualname__)
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
                    change.amount_mc,
                    change.held_change_mc,
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
                    change.kind.value,
                    change.lot_id,
                    change.description,
                    bool(postings),  # a statement line only for events that move money
                    [p.account for p in postings],
                    [p.amount_mc for p in postings],
                    [p.lot_id for p in postings],
                ),
            )
        ]
