"""Group commit: concurrent commands share one transaction of the event store.

The library's recorder makes every save its own transaction, and every inserting transaction
takes ``LOCK TABLE ... IN EXCLUSIVE MODE`` (so notification ids are issued in commit order and
the relay never passes a gap that is filled later). So the service commits one command at a
time, one fsync each. Here a save hands its stored events to the recorder's committer thread
instead, which takes every save that is waiting (at most ``batch_size_max``, waiting at most
``batch_wait_ms_max`` for stragglers) and records them in one transaction: one lock, one
NOTIFY, one commit, one fsync. Each caller gets back its own notification ids, or its own
error, once the transaction has committed.

A batch behaves exactly as its saves run one after another in queue order, each in its own
transaction, except that they become durable together. Each save is applied under its own
savepoint, so a save that fails (an IntegrityError: another writer, or a batch-mate earlier in
the queue, saved that aggregate version or that tracking position first) is rolled back alone
and answered alone with its error; its batch-mates commit. The command that lost then reads
again and decides again (domain/commands/store.py's ``@command``), as it does today. The fast
path inserts the whole batch in one statement inside one savepoint; only when that fails does
the committer fall back to one savepoint per save, to find out whose save it was.

A failure of the batch's transaction itself (the lock's timeout, a lost connection, a failed
commit) is every caller's error, as it would have been for each of their own transactions; the
library's retry of operational errors then submits each save again.

Commands run in their callers' threads (reads, checks, the aggregate calls): only the write is
queued, so the domain stays free of I/O and unaware of batching. Wired in by
``eventstore/persistence.py``'s ``event_store_env`` through the library's
``APPLICATION_RECORDER_TOPIC`` and ``PROCESS_RECORDER_TOPIC``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from eventsourcing.persistence import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresProcessRecorder,
)
from eventsourcing.utils import retry
from psycopg import Connection, Cursor
from psycopg.rows import DictRow

BATCH_SIZE_MAX = 32  # saves per transaction; under PostgreSQL's 64 cached subtransactions
BATCH_WAIT_MS_MAX = 2  # the longest a save waits for batch-mates beyond the previous commit
QUEUE_SIZE_MAX = 1024  # saves waiting for the committer; a caller past it waits for room
QUEUE_PUT_TIMEOUT_S = 30.0  # then gives up with an OperationalError (which the library retries)
ANSWER_TIMEOUT_S = 120.0  # a save's longest wait for its batch (the lock's timeout is 10 s)
IDLE_EXIT_S = 5.0  # the committer thread ends after this long with nothing to do

Outcome = Sequence[int] | None | PersistenceError  # a save's notification ids, or its error


@dataclass
class _Save:
    stored_events: Sequence[StoredEvent]
    kwargs: dict[str, Any]  # the library's keyword arguments of insert_events (tracking)
    answered: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | BaseException = None

    def answer(self, outcome: Outcome | BaseException) -> None:
        self.outcome = outcome
        self.answered.set()


def _as_persistence_error(exc: Exception) -> PersistenceError:
    """The library's own error for a database error (as its get_connection translates them),
    so that ``@command`` recognises a conflict whichever thread ran the insert."""
    if isinstance(exc, PersistenceError):
        return exc
    for psycopg_error, error in (
        (psycopg.IntegrityError, IntegrityError),
        (psycopg.DataError, DataError),
        (psycopg.ProgrammingError, ProgrammingError),
    ):
        if isinstance(exc, psycopg_error):
            return error(str(exc))
    return DatabaseError(str(exc))


class GroupCommitter:
    """The queue of saves and the thread that commits them in batches, for one recorder."""

    def __init__(
        self,
        recorder: PostgresApplicationRecorder,
        *,
        batch_size_max: int = BATCH_SIZE_MAX,
        batch_wait_ms_max: int = BATCH_WAIT_MS_MAX,
        queue_size_max: int = QUEUE_SIZE_MAX,
    ) -> None:
        assert 1 <= batch_size_max <= 64, batch_size_max
        assert 0 <= batch_wait_ms_max <= 2, batch_wait_ms_max
        assert queue_size_max >= batch_size_max, (queue_size_max, batch_size_max)
        assert not recorder.datastore.enable_db_functions, "the insert function takes its lock"
        self.recorder = recorder
        self.batch_size_max = batch_size_max
        self.batch_wait_ms_max = batch_wait_ms_max
        self._queue: queue.Queue[_Save] = queue.Queue(maxsize=queue_size_max)
        self._lock = threading.Lock()  # guards starting and ending the thread
        self._thread: threading.Thread | None = None
        self._previous_batch_size = 1
        self.batch_sizes: list[int] = []  # the last batches' sizes, for tests and the bench
        self.batch_sizes_kept = 10_000
        self.idle_exit_s = IDLE_EXIT_S

    @property
    def running(self) -> bool:
        """Whether the committer thread is up (it ends when idle, and the next save starts it)."""
        with self._lock:
            return self._thread is not None

    @property
    def queued(self) -> int:
        """Saves waiting for a batch (approximate while writers are at work)."""
        return self._queue.qsize()

    def insert(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Record one save in the next batch; its notification ids once the batch committed."""
        save = _Save(stored_events, kwargs)
        try:
            self._queue.put(save, timeout=QUEUE_PUT_TIMEOUT_S)
        except queue.Full:
            raise OperationalError("the group commit queue stayed full") from None
        # After the put: a committer that found the queue empty and ended has cleared _thread
        # under this lock, so this save starts the next one.
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pinksea-group-commit", daemon=True
                )
                self._thread.start()
        if not save.answered.wait(ANSWER_TIMEOUT_S):
            raise OperationalError("the group commit did not answer in time")
        if isinstance(save.outcome, BaseException):
            raise save.outcome
        return save.outcome

    # ---------------------------------------------------------------- the committer thread

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.idle_exit_s)
            except queue.Empty:
                with self._lock:  # a save put after this check starts a new committer
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            batch = self._collect(first)
            self._previous_batch_size = len(batch)
            self.batch_sizes.append(len(batch))
            del self.batch_sizes[: -self.batch_sizes_kept]
            self._commit(batch)

    def _collect(self, first: _Save) -> list[_Save]:
        """The saves waiting now, and, when the last batch showed that several writers are at
        work, those that arrive within ``batch_wait_ms_max`` until there are as many as last
        time (a lone writer never waits)."""
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_ms_max / 1000
        expected = min(self._previous_batch_size, self.batch_size_max)
        while len(batch) < self.batch_size_max:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            wait_s = deadline - time.monotonic()
            if len(batch) >= expected or wait_s <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=wait_s))
            except queue.Empty:
                break
        return batch

    def _commit(self, batch: list[_Save]) -> None:
        """One transaction for the batch; then every save gets its answer."""
        recorder = self.recorder
        try:
            with (
                recorder.datastore.get_connection() as conn,
                conn.transaction(),
                conn.cursor() as curs,
            ):
                recorder._lock_table(curs)
                recorder._notify_channel(curs)
                outcomes = self._insert_batch(conn, curs, batch)
        except BaseException as exc:  # the transaction did not commit: nobody's save counts
            for save in batch:
                save.answer(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for save, outcome in zip(batch, outcomes, strict=True):
            save.answer(outcome)

    def _insert_batch(
        self, conn: Connection[DictRow], curs: Cursor[DictRow], batch: list[_Save]
    ) -> list[Outcome]:
        try:
            with conn.transaction():  # a savepoint: a failure leaves the lock held
                ids = self._insert(curs, batch)
        except (psycopg.IntegrityError, IntegrityError, psycopg.DataError, DataError):
            return [self._insert_alone(conn, curs, save) for save in batch]
        outcomes: list[Outcome] = []
        start = 0
        for save in batch:
            count = len(save.stored_events)
            outcomes.append(ids[start : start + count] if count else None)
            start += count
        assert start == len(ids), (start, len(ids))
        return outcomes

    def _insert_alone(
        self, conn: Connection[DictRow], curs: Cursor[DictRow], save: _Save
    ) -> Outcome:
        try:
            with conn.transaction():
                ids = self._insert(curs, [save])
        except (psycopg.OperationalError, psycopg.InterfaceError, OperationalError):
            raise  # the connection's trouble, not this save's: the batch fails
        except Exception as exc:  # this save alone is rolled back and answered with its error
            return _as_persistence_error(exc)
        return ids if save.stored_events else None

    def _insert(self, curs: Cursor[DictRow], saves: list[_Save]) -> list[int]:
        """The saves' trackings, then all their events in one statement; the events'
        notification ids in the order of the saves."""
        recorder = self.recorder
        for save in saves:
            recorder._insert_events(curs, save.stored_events, **save.kwargs)  # tracking
        stored_events = [e for save in saves for e in save.stored_events]
        if not stored_events:
            return []
        # The aggregate recorder's plain insert: this transaction already holds the lock.
        PostgresAggregateRecorder._insert_stored_events(recorder, curs, stored_events)
        ids = recorder._fetch_ids_after_insert_events(curs, stored_events)
        assert ids is not None and len(ids) == len(stored_events), ids
        return list(ids)


# An arbitrary, fixed advisory lock key for "creating the event store's tables".
CREATE_TABLES_LOCK_KEY = 0x70696E6B_74616273  # "pinktabs"


class _GroupCommitting:
    """Inserts through a GroupCommitter; mixed in before one of the library's recorders."""

    committer: GroupCommitter

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert isinstance(self, PostgresApplicationRecorder)
        self.committer = GroupCommitter(self)

    def _create_table(self, curs: Cursor[DictRow]) -> None:
        # Processes starting together each create the tables (IF NOT EXISTS); concurrent DDL on
        # the same catalog rows fails one of them with "tuple concurrently updated". One at a
        # time, in the creating transaction (the lock ends with it).
        curs.execute("SELECT pg_advisory_xact_lock(%s)", (CREATE_TABLES_LOCK_KEY,))
        super()._create_table(curs)  # type: ignore[misc]

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events and kwargs.get("tracking") is None:
            return None  # nothing to record
        return self.committer.insert(stored_events, **kwargs)


class GroupCommitApplicationRecorder(_GroupCommitting, PostgresApplicationRecorder):
    """The library's application recorder, its inserts committed in groups."""


class GroupCommitProcessRecorder(_GroupCommitting, PostgresProcessRecorder):
    """The library's process recorder (events with a consumer's tracking), its inserts
    committed in groups: each save's tracking is inserted under its savepoint with its events."""
