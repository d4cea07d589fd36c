"""``GET /v1/jobs/{job_id}/events``: a job's status changes and per-step progress as
Server-Sent Events, ending at a terminal state.

Both sources reach every API process, so the stream works wherever the job's reports land:
- progress: the workers publish each step on the job's Redis channel
  (infra/redis_keys.progress_channel); the last message is also kept, for late subscribers;
- status: from the jobs read model, through this process's JobWatcher (api/live.py).

Events: ``status`` (id: the store position; a ``completed`` one carries the images with
fresh signed URLs), ``queue`` (a queued job's place in its tier's queue and ETA, sent when it
changes; ``queue: null`` once it left the queue), ``progress``, and a final ``end``; a comment
line every ``sse_heartbeat_s`` keeps proxies from closing an idle stream.

A browser's ``EventSource`` cannot send headers: ``POST /v1/jobs/{id}/stream-token`` hands out
a token for this job's stream, a few minutes long, sent as ``?access_token=``
(api/stream_tokens.py).

A user holds at most their plan's number of streams at once (api/live.py, ``StreamSlots``);
one more is a 429 ``stream-limit`` with Retry-After. A stream's slot is given back when the
stream ends, and lapses after ``sse_slot_ttl_s`` if its process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import anyio
import asyncpg
import structlog
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from api import problems as p
from api.deps import (
    CurrentUser,
    ServicesDep,
    StreamCaller,
    rate_limit,
    stream_rate_limit,
    stream_tokens,
)
from api.failures import public_failure_reason
from api.job_views import job_view, queue_view
from api.live import StreamSlot, streams_allowed
from api.problems import ProblemError, problem_responses
from api.routers.jobs import job_not_found
from api.schemas import StreamToken
from api.services import Services, now
from domain.errors import NotFound
from domain.job_lifecycle import TERMINAL
from domain.jobs import JobStatus
from infra import redis_keys

log = structlog.get_logger("api.events")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

QUEUE_INTERVAL_S = 2.0  # how often an open stream looks at its queued job's place

SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["status", "queue", "progress", "end"]},
        "data": {"type": "string", "description": "a JSON object"},
        "id": {"type": "string", "description": "status events: the store position"},
    },
    "required": ["event", "data"],
}


@router.get(
    "/{job_id}/events",
    summary="Live status and progress of one of your jobs (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "event: status | queue | progress | end; data: JSON",
            # One event of the stream (OpenAPI 3.1 tools read an event stream's schema so).
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        },
        **problem_responses(401, 403, 404, 422, 429, 503),
    },
    dependencies=[Depends(stream_rate_limit)],
)
async def job_events(
    job_id: UUID,
    request: Request,
    principal: StreamCaller,
    svc: ServicesDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            pattern=r"^[0-9]{1,19}$",
            description="The `id` of the last status you handled (EventSource sends it when it "
            "reconnects): statuses up to it are not sent again.",
        ),
    ] = None,
) -> StreamingResponse:
    await _check_owner(svc, principal.user_id, job_id)
    plan = await svc.plan_of(principal.user_id)
    slot = await svc.stream_slots.take(principal.user_id, plan)
    if slot is None:
        allowed = streams_allowed(plan)
        retry = svc.stream_slots.retry_after_s
        raise ProblemError(
            p.STREAM_LIMIT,
            f"You already have {allowed} live event streams open, the most your {plan} plan "
            f"allows; close one (or let one end) and retry in {retry} s.",
            headers={"Retry-After": str(retry)},
            limit=allowed,
        )
    return _SlotStreamingResponse(
        _stream(
            svc,
            request,
            principal.user_id,
            job_id,
            slot,
            seen_position=int(last_event_id) if last_event_id else 0,
        ),
        slot,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/{job_id}/stream-token",
    status_code=201,
    response_model=StreamToken,
    summary="A short-lived token for this job's event stream (for browsers' EventSource)",
    description="EventSource cannot send an Authorization header: open "
    "`GET /v1/jobs/{job_id}/events?access_token=<token>` instead, before `expires_at` "
    "(5 minutes). The token opens this job's stream only and nothing else; an open stream "
    "runs on after it expires, a reconnection needs a new one.",
    responses=problem_responses(401, 403, 404, 422, 429, 503),
    dependencies=[Depends(rate_limit("command"))],
)
async def create_stream_token(
    job_id: UUID, request: Request, principal: CurrentUser, svc: ServicesDep
) -> StreamToken:
    await _check_owner(svc, principal.user_id, job_id)
    token, expires_at = await stream_tokens(request, svc).issue(principal.user_id, job_id, now())
    return StreamToken(
        token=token,
        expires_at=expires_at,
        url=f"/v1/jobs/{job_id}/events?access_token={token}",
    )


async def _check_owner(svc: Services, user_id: str, job_id: UUID) -> None:
    """Ownership from the event store: a job submitted a moment ago is there already."""
    try:
        job = await svc.command(svc.application.job, job_id)
    except NotFound:
        raise job_not_found(job_id) from None
    if job.user_id != user_id:
        raise job_not_found(job_id)


class _SlotStreamingResponse(StreamingResponse):
    """Gives the stream's slot back however the response ends: finished, the client gone, a
    send that failed, a cancellation (the stream's own ``finally`` covers the usual cases;
    this one covers a stream that never started or whose generator was left suspended)."""

    def __init__(self, content: AsyncIterator[str], slot: StreamSlot, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.move_on_after(5, shield=True):
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
                await self.slot.release()


def _sse(event: str, data: Any, id_: int | None = None) -> str:
    head = f"id: {id_}\n" if id_ is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=_json_default)}\n\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(type(value).__name__)


async def _stream(
    svc: Services,
    request: Request,
    user_id: str,
    job_id: UUID,
    slot: StreamSlot,
    seen_position: int = 0,
) -> AsyncIterator[str]:
    settings = svc.settings
    prefix = settings.redis_key_prefix
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    deadline = time.monotonic() + settings.sse_max_duration_s
    async with (
        slot.kept(),
        svc.watcher.watch(job_id) as statuses,
        _progress(svc, job_id, inbox),
    ):
        forward = asyncio.create_task(_forward(statuses, inbox))
        queue = asyncio.create_task(_queue_changes(svc, job_id, inbox))
        try:
            with contextlib.suppress(RedisError, OSError):
                last = await svc.redis.get(redis_keys.last_progress(prefix, job_id))
                if last:
                    inbox.put_nowait(("progress", json.loads(last)))
            while time.monotonic() < deadline:
                try:
                    kind, data = await asyncio.wait_for(inbox.get(), settings.sse_heartbeat_s)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                if kind == "status":
                    row = _status_payload(data)
                    if row["position"] <= seen_position:
                        # The client handled this state before it reconnected: resume after
                        # it (a finished job it saw finish only gets its end).
                        if row["status"] in TERMINAL:
                            yield _sse("end", {"job_id": str(job_id), "status": row["status"]})
                            return
                        continue
                    if row["status"] == JobStatus.COMPLETED.value:
                        view = await job_view(svc, user_id, job_id, cached=False)
                        row["images"] = [] if view is None else view["images"]
                    yield _sse("status", row, row["position"])
                    if row["status"] in TERMINAL:
                        yield _sse("end", {"job_id": str(job_id), "status": row["status"]})
                        return
                elif kind == "queue":
                    yield _sse("queue", {"job_id": str(job_id), "queue": data})
                else:
                    yield _sse("progress", data)
        finally:
            forward.cancel()
            queue.cancel()


async def _forward(statuses: asyncio.Queue[dict[str, Any]], inbox: asyncio.Queue[Any]) -> None:
    while True:
        inbox.put_nowait(("status", await statuses.get()))


async def _queue_changes(svc: Services, job_id: UUID, inbox: asyncio.Queue[Any]) -> None:
    """Put the job's queue place in ``inbox`` when it changes, checking every
    QUEUE_INTERVAL_S for as long as the stream runs (the stream's deadline bounds it)."""
    last: Any = None
    while True:
        try:
            place = await queue_view(svc, job_id)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as e:
            log.warning("queue place not read", job_id=str(job_id), error=repr(e))
        else:
            current = None if place is None else place.model_dump(mode="json")
            if current != last:
                inbox.put_nowait(("queue", current))
                last = current
        await asyncio.sleep(QUEUE_INTERVAL_S)


def _status_payload(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "user_id"}
    out["job_id"] = str(row["job_id"])
    # What the job's owner may read of a failure (api/failures.py); operators read the rest.
    out["failure_reason"] = public_failure_reason(row["failure_reason"], row["failure_fault"])
    return out


@contextlib.asynccontextmanager
async def _progress(
    svc: Services, job_id: UUID, inbox: asyncio.Queue[tuple[str, Any]]
) -> AsyncIterator[None]:
    """Relay the job's Redis progress channel into ``inbox`` while the block runs. Without
    Redis the stream still carries status changes."""
    channel = redis_keys.progress_channel(svc.settings.redis_key_prefix, job_id)
    pubsub = svc.pubsub_redis.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(channel)
    except (RedisError, OSError) as e:
        log.warning("progress unavailable", job_id=str(job_id), error=repr(e))
        with contextlib.suppress(Exception):
            await pubsub.aclose()
        yield
        return

    async def read() -> None:
        while True:
            try:
                message = await pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as e:
                log.warning("progress stream broke", job_id=str(job_id), error=repr(e))
                return
            if message and message.get("type") == "message":
                try:
                    inbox.put_nowait(("progress", json.loads(message["data"])))
                except ValueError:
                    continue  # not JSON: not from a worker of ours

    reader = asyncio.create_task(read())
    try:
        yield
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        with contextlib.suppress(Exception):
            await pubsub.unsubscribe(channel)
            await pubsub.aclose()
