"""Operational errors: what a long-running loop retries (with backoff) instead of dying.

An operational error is the world, not the code: a service that is down, restarting, slow or
overloaded (a broken connection, a refused or timed-out one, a server shutting down, a
statement cancelled by its timeout, too many connections, a serialization failure). Retrying
it later can succeed. Anything else raised in a loop (an AssertionError, a KeyError, a
pydantic ValidationError, a SQL syntax error, ...) is a bug or a corrupt input: it is not in
this tuple, so it propagates, the process exits non-zero and its supervisor (``pinksea up``,
the chaos harness, ECS) restarts it, where a human sees the restarts, instead of a loop logging
the same bug forever. Every loop keeps its position in the database or in Kafka, so a restart
loses nothing.

Loops catch ``OPERATIONAL_ERRORS`` by name (plus, for the notifier, a mail server's transient
refusal); nothing catches ``Exception``.
"""

from __future__ import annotations

import asyncpg
import botocore.exceptions
import redis.exceptions
from aiokafka.errors import KafkaError
from eventsourcing import persistence

OPERATIONAL_ERRORS: tuple[type[BaseException], ...] = (
    # Sockets: refused, reset, unreachable, DNS failures. TimeoutError (asyncio's timeouts,
    # asyncpg's ``timeout=``) and ConnectionError are OSErrors; named for the reader.
    OSError,
    TimeoutError,
    ConnectionError,
    # Kafka (aiokafka): broker unreachable, leader moved, request timed out, rebalance.
    KafkaError,
    # PostgreSQL through asyncpg, by SQLSTATE class: 08 connection exceptions (including a
    # connection closed mid-query), 57 operator intervention (shutting down, starting up,
    # statement timeout), 53 insufficient resources (too many connections), 40 transaction
    # rollback (serialization failure, deadlock).
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    # PostgreSQL through the event store (eventsourcing wraps psycopg's errors): connection
    # lost, pool exhausted or timed out.
    persistence.OperationalError,
    persistence.InterfaceError,
    # Redis: down or slow.
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # S3 (botocore): endpoint unreachable, connect or read timeout, connection closed.
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
)


class Backoff:
    """Pauses between retries of an operational error: doubling from ``first_s`` up to
    ``max_s``, back to ``first_s`` after a success."""

    def __init__(self, first_s: float, max_s: float) -> None:
        assert 0 < first_s <= max_s, f"backoff {first_s} s to {max_s} s"
        self.first_s = first_s
        self.max_s = max_s
        self.next_s = first_s

    def failed(self) -> float:
        """The pause before the next try."""
        pause_s = self.next_s
        self.next_s = min(self.next_s * 2, self.max_s)
        assert self.first_s <= pause_s <= self.max_s
        return pause_s

    def succeeded(self) -> None:
        self.next_s = self.first_s
