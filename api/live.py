"""Live job status for the event streams, one poller per API process.

Status changes are made by other processes (the scheduler, the settler) and reach every API
process through the jobs read model, so a stream works wherever its job's reports arrive.
Rather than one query per open stream, one task per process reads every watched job in a
single query each ``interval_s`` and hands each stream the rows that moved past what it has
seen (by store position, so a stream never goes backwards). Per-step progress does not go
through here: it comes from the workers over Redis pub/sub (see routers/events.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import structlog

log = structlog.get_logger("api.live")

_COLUMNS = """
    job_id, user_id, status, attempt, cancel_requested, hold_mc, gpu_ms, charged_mc,
    refunded_mc, image_count, rejection_reason, rejection_detail, failure_reason,
    updated_at, position
"""


class _Watch:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.position = 0


class JobWatcher:
    def __init__(self, pool: asyncpg.Pool, *, interval_s: float = 0.25) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self.watches: dict[UUID, set[_Watch]] = {}
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()

    @contextlib.asynccontextmanager
    async def watch(self, job_id: UUID) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of the job's read-model rows, each newer than the last."""
        w = _Watch()
        self.watches.setdefault(job_id, set()).add(w)
        self._ensure_running()
        self.wake.set()  # a new stream gets its first state without waiting a full interval
        try:
            yield w.queue
        finally:
            watches = self.watches.get(job_id)
            if watches is not None:
                watches.discard(w)
                if not watches:
                    del self.watches[job_id]

    def _ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="job-watcher")

    async def _run(self) -> None:
        while self.watches:
            try:
                await self.poll()
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as e:
                log.warning("job watcher poll failed", error=repr(e))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval_s)
            self.wake.clear()

    async def poll(self) -> None:
        ids = list(self.watches)
        if not ids:
            return
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ANY($1::uuid[])", ids
        )
        for row in rows:
            for w in list(self.watches.get(row["job_id"], ())):
                if row["position"] > w.position:
                    w.position = row["position"]
                    w.queue.put_nowait(dict(row))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
