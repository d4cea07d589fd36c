"""What a projection is: a named set of read-model tables and an async handler per event.

The runners (Kafka live, event-store replay) guarantee to a projection's ``apply``:
- it runs inside an asyncpg transaction that also records the projection's position, so a
  crash leaves either both or neither;
- each event is applied at most once (the runner gates on the aggregate's version per
  projection), and the events of one aggregate arrive in version order.
So handlers are plain inserts/updates with no idempotency logic of their own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import asyncpg

from eventstore.envelope import Envelope


class Projection(ABC):
    name: ClassVar[str]
    topics: ClassVar[tuple[str, ...]]  # logical domain topics it consumes
    tables: ClassVar[tuple[str, ...]]  # read-model tables it owns (truncated on rebuild)

    def wants(self, env: Envelope) -> bool:
        """Whether this projection handles the event (the rest are skipped cheaply)."""
        return True

    @abstractmethod
    async def apply(self, conn: asyncpg.Connection, env: Envelope) -> None:
        """Write the event's effect on this projection's tables."""

    async def apply_batch(self, conn: asyncpg.Connection, envs: Iterable[Envelope]) -> None:
        """Apply many events in stream order (skipping those it does not want). Projections
        override this to send a batch in few round trips; the effect must equal ``apply``."""
        for env in envs:
            if self.wants(env):
                await self.apply(conn, env)
