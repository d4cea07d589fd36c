"""Projections as SQL statements, applied one event at a time or pipelined in batches.

A ``StatementProjection`` turns each event into a few SQL statements. ``apply`` runs them one
by one; ``apply_batch`` sends a whole batch of events in a handful of pipelined ``executemany``
round trips, which is what makes a rebuild fast (one round trip per event would dominate).
Every statement checks its own expectations in SQL (``read_model_check``, see the migration),
so it fails the same way whether it runs alone or inside a pipeline.

Reordering in a batch is safe because each statement only touches rows of its own aggregate
(a job's rows, an account's rows, a subscription's rows): statements of one aggregate keep
their order, statements of different aggregates commute.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from uuid import UUID

import asyncpg

from eventstore.decoding import UnknownEventType, domain_event
from eventstore.envelope import Envelope
from projections.base import Projection

Statement = tuple[str, tuple[Any, ...]]  # SQL text and its arguments
# Per event type: one SQL statement, and its arguments after the key ($1 the aggregate id, $2
# the event's time, $3 its position) taken from the domain event.
EventStatements = Mapping[str, tuple[str, Callable[[Any], tuple[Any, ...]]]]


class StatementBatch:
    """Statements in stream order, grouped into as few ``executemany`` calls as order allows.

    Groups run in the order they were opened. A statement joins the newest group with the same
    SQL unless an earlier statement of its aggregate sits in a later group; then it opens a new
    group. So each aggregate's statements run in order, and a long run of one kind of event
    (the ledger's money movements, say) becomes one round trip.
    """

    def __init__(self) -> None:
        self._groups: list[tuple[str, list[tuple[Any, ...]]]] = []
        self._newest_group_of_sql: dict[str, int] = {}
        self._last_group_of_aggregate: dict[UUID, int] = {}

    def add(self, aggregate_id: UUID, sql: str, args: tuple[Any, ...]) -> None:
        group = self._newest_group_of_sql.get(sql, -1)
        if group < self._last_group_of_aggregate.get(aggregate_id, -1) or group < 0:
            group = len(self._groups)
            self._groups.append((sql, []))
            self._newest_group_of_sql[sql] = group
        self._groups[group][1].append(args)
        self._last_group_of_aggregate[aggregate_id] = group

    def __len__(self) -> int:
        return sum(len(rows) for _, rows in self._groups)

    @property
    def groups(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The ``executemany`` calls ``run`` makes, in order: SQL and argument rows."""
        return self._groups

    @property
    def round_trips(self) -> int:
        return len(self._groups)

    async def run(self, conn: asyncpg.Connection) -> None:
        for sql, rows in self._groups:
            if len(rows) == 1:
                await conn.execute(sql, *rows[0])
            else:
                await conn.executemany(sql, rows)


class StatementProjection(Projection):
    """A projection whose effect per event is a list of SQL statements."""

    async def prepare(self, conn: asyncpg.Connection, envs: Sequence[Envelope]) -> None:
        """Load what ``statements`` needs for these events (before any of them is applied)."""

    @abstractmethod
    def statements(self, env: Envelope) -> list[Statement]:
        """The statements that apply one event this projection wants."""

    async def apply(self, conn: asyncpg.Connection, env: Envelope) -> None:
        await self.prepare(conn, [env])
        for sql, args in self.statements(env):
            await conn.execute(sql, *args)

    async def apply_batch(self, conn: asyncpg.Connection, envs: Iterable[Envelope]) -> None:
        """Apply many events (in stream order; those it does not want are skipped) in few
        round trips. Same effect as ``apply`` on each, in the caller's transaction."""
        wanted = [env for env in envs if self.wants(env)]
        await self.prepare(conn, wanted)
        batch = StatementBatch()
        for env in wanted:
            for sql, args in self.statements(env):
                batch.add(env.aggregate_id, sql, args)
        await batch.run(conn)


class TableProjection(StatementProjection):
    """A projection whose every event type is one statement of ``event_statements``: an event
    type it wants but does not list stops it (UnknownEventType) rather than being skipped."""

    event_statements: EventStatements

    def statements(self, env: Envelope) -> list[Statement]:
        try:
            sql, arguments = self.event_statements[env.type]
        except KeyError:
            raise UnknownEventType(env.type) from None
        key = (env.aggregate_id, env.occurred_at, env.position)
        return [(sql, key + arguments(domain_event(env)))]
