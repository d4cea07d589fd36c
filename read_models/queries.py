"""Queries over the read models, each scoped to one user in SQL.

Tenant isolation: every user-facing query filters by ``user_id`` in its WHERE clause, so another
user's job, image or ledger line is simply not found. Lists page with opaque cursors (the last
row's sort key, tagged with the list it belongs to, JSON in URL-safe base64); a page holds
``limit`` items (1..100, default 20) and the cursor of the next one. Every argument is a query
parameter: nothing a caller sends is ever spliced into SQL text.

``db`` is an asyncpg pool or connection. Queries that read several tables do so in one
repeatable-read snapshot, so a balance and its lots always agree.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeAlias, TypeVar
from uuid import UUID

import asyncpg

from domain.credits import PROMOTIONAL_SOURCES
from domain.job_events import ImageCategory, ImageOrigin
from domain.jobs import JobStatus
from domain.parameters import JobParameters
from domain.personal_data import PERSONAL_FIELDS, is_sealed, withheld
from read_models.models import (
    Balance,
    CreditLot,
    Image,
    ImageDetail,
    ImageSource,
    Job,
    LedgerEntry,
    Page,
    Plan,
    Subscription,
    UsageBucket,
    UsageSummary,
    User,
    UserSummary,
)

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection
T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_AFTER_EVERYTHING = 2**63 - 1  # a sort key above every position: the first page


class InvalidCursor(ValueError):
    """A cursor that this list did not hand out."""


# ---------------------------------------------------------------------------------- paging


def encode_cursor(kind: str, *key: int | str) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, *types: type) -> tuple[Any, ...]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error):
        raise InvalidCursor("the cursor is not one this API handed out") from None
    if (
        not isinstance(value, list)
        or len(value) != len(types) + 1
        or value[0] != kind
        # bool is an int in Python; no cursor key is a bool
        or not all(type(v) is t for v, t in zip(value[1:], types, strict=True))
    ):
        raise InvalidCursor(f"the cursor does not belong to this {kind} list")
    return tuple(value[1:])


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def _page(
    rows: Sequence[asyncpg.Record],
    limit: int,
    item: Callable[[asyncpg.Record], T],
    cursor: Callable[[asyncpg.Record], str],
) -> Page[T]:
    """Rows fetched with ``LIMIT limit + 1``: the extra row only says there is a next page."""
    shown = rows[:limit]
    more = len(rows) > limit
    return Page(tuple(item(r) for r in shown), cursor(shown[-1]) if more else None)


@asynccontextmanager
async def _snapshot(db: Db) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(db, asyncpg.Pool):
        async with (
            db.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield conn
    elif db.is_in_transaction():
        yield db
    else:
        async with db.transaction(isolation="repeatable_read", readonly=True):
            yield db


# -------------------------------------------------------------------------------- credits

_LOT_COLUMNS = """
    lot_id, seq, source, amount_mc, remaining_mc, held_mc, consumed_mc, expired_mc,
    debited_mc, refunded_mc, valid_from, valid_until, reference, expired,
    (NOT expired AND valid_from <= $2 AND (valid_until IS NULL OR $2 < valid_until)) AS spendable
"""


async def get_balance(db: Db, user_id: str, *, at: datetime | None = None) -> Balance | None:
    """The user's balance and lots (in spend order); ``spendable`` as of ``at`` (now)."""
    at = at or datetime.now(UTC)
    async with _snapshot(db) as conn:
        row = await conn.fetchrow(
            "SELECT user_id, available_mc, held_mc, granted_mc, consumed_mc, refunded_mc,"
            " expired_mc, debited_mc, low_balance, position FROM balances WHERE user_id = $1",
            user_id,
        )
        if row is None:
            return None
        # Spend order (domain.credits.Lot.spend_order_key): soonest expiry, promotional
        # before paid, oldest.
        lots = await conn.fetch(
            f"SELECT {_LOT_COLUMNS} FROM credit_lots WHERE user_id = $1"
            " ORDER BY coalesce(valid_until, 'infinity'), source <> ALL($3::text[]), seq",
            user_id,
            at,
            sorted(PROMOTIONAL_SOURCES),
        )
    credit_lots = tuple(CreditLot(**lot) for lot in lots)
    return Balance(
        **row,
        spendable_mc=sum(lot.remaining_mc for lot in credit_lots if lot.spendable),
        lots=credit_lots,
        as_of=at,
    )


async def list_ledger(
    db: Db, user_id: str, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[LedgerEntry]:
    """Statement lines, newest first."""
    limit = _check_limit(limit)
    (before,) = decode_cursor(cursor, "ledger", int) if cursor else (_AFTER_EVERYTHING,)
    rows = await db.fetch(
        "SELECT event_id, position, occurred_at, kind, job_id, lot_id, amount_mc,"
        " held_change_mc, available_after_mc, held_after_mc, description"
        " FROM credit_transactions WHERE user_id = $1 AND position < $2"
        " ORDER BY position DESC LIMIT $3",
        user_id,
        before,
        limit + 1,
    )
    return _page(
        rows,
        limit,
        lambda r: LedgerEntry(**r),
        lambda r: encode_cursor("ledger", r["position"]),
    )


_USAGE_GROUPS = {
    "day": "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "model": "model",
}


async def usage_summary(
    db: Db, user_id: str, start: datetime, end: datetime, group_by: str = "day"
) -> UsageSummary:
    """Billed GPU usage in [start, end), by UTC day or by model."""
    group = _USAGE_GROUPS.get(group_by)
    if group is None:
        raise ValueError(f"group_by must be one of {', '.join(_USAGE_GROUPS)}")
    if end <= start:
        raise ValueError("end must be after start")
    rows = await db.fetch(
        f"SELECT {group} AS key, count(*) AS jobs, sum(gpu_ms)::bigint AS gpu_ms,"
        " sum(charged_mc)::bigint AS charged_mc, sum(refunded_mc)::bigint AS refunded_mc"
        " FROM usage_records WHERE user_id = $1 AND occurred_at >= $2 AND occurred_at < $3"
        " GROUP BY 1 ORDER BY 1",
        user_id,
        start,
        end,
    )
    buckets = tuple(UsageBucket(**r) for r in rows)
    return UsageSummary(
        group_by=group_by,
        start=start,
        end=end,
        buckets=buckets,
        jobs=sum(b.jobs for b in buckets),
        gpu_ms=sum(b.gpu_ms for b in buckets),
        charged_mc=sum(b.charged_mc for b in buckets),
        refunded_mc=sum(b.refunded_mc for b in buckets),
    )


# ----------------------------------------------------------------------------------- jobs

_JOB_COLUMNS = """
    job_id, status, tier, parameters, seed, hold_mc, budget_ms, estimate_ms, attempt,
    cancel_requested, gpu_ms, cuda_ms, charged_mc, refunded_mc, image_count, rejection_reason,
    rejection_detail, failure_reason, failure_fault, submitted_at, accepted_at, started_at,
    finished_at, updated_at
"""
_IMAGE_COLUMNS = """
    name, job_id, idx AS index, key, thumbnail_key, size_bytes, width, height, created_at
"""
_JOB_STATUSES = frozenset(s.value for s in JobStatus)
# An image with its flags and its job's parameters (the job's row: one per image, by its key).
# A job's images and the user's uploads (which no job made: no parameters, no seed).
_IMAGE_DETAIL = """
    SELECT i.name, i.job_id, i.upload_id, i.idx AS index, i.key, i.thumbnail_key, i.size_bytes,
        i.width, i.height, i.created_at, i.image_category, i.image_origin, i.starred,
        i.is_intermediate, j.parameters, j.seed, i.position
    FROM images i LEFT JOIN jobs j ON j.job_id = i.job_id
"""
_IMAGE_CATEGORIES = frozenset(c.value for c in ImageCategory)
_IMAGE_ORIGINS = frozenset(o.value for o in ImageOrigin)


def _job(row: asyncpg.Record, images: tuple[Image, ...] = ()) -> Job:
    fields = dict(row)
    fields.pop("submitted_position", None)  # a sort key, not part of the job
    fields["parameters"], fields["sealed"] = _stored_parameters(fields["parameters"])
    return Job(**fields, images=images)


def _stored_parameters(stored_json: str) -> tuple[JobParameters, Mapping[str, str]]:
    """A job's stored parameters, and their sealed personal fields apart: sealed prompts
    (domain/personal_data.py) stay sealed here, the API opens them."""
    stored = json.loads(stored_json)
    sealed = {k: v for k, v in stored.items() if k in PERSONAL_FIELDS and is_sealed(v)}
    return JobParameters.model_validate(withheld(stored)), MappingProxyType(sealed)


def _image(row: asyncpg.Record) -> Image:
    fields = dict(row)
    fields.pop("position", None)  # a sort key, not part of the image
    return Image(**fields)


def _image_detail(row: asyncpg.Record) -> ImageDetail:
    fields = dict(row)
    fields.pop("position", None)  # a sort key, not part of the image
    if fields["parameters"] is None:  # an upload
        fields["sealed"] = MappingProxyType({})
    else:
        fields["parameters"], fields["sealed"] = _stored_parameters(fields["parameters"])
    return ImageDetail(**fields)


async def list_jobs(
    db: Db,
    user_id: str,
    status: str | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page[Job]:
    """The user's jobs, newest first, optionally of one status."""
    limit = _check_limit(limit)
    if status is not None and status not in _JOB_STATUSES:
        raise ValueError(f"status must be one of {', '.join(sorted(_JOB_STATUSES))}")
    (before,) = decode_cursor(cursor, "jobs", int) if cursor else (_AFTER_EVERYTHING,)
    where = "user_id = $1 AND submitted_position < $2"
    args: list[Any] = [user_id, before, limit + 1]
    if status is not None:
        where += " AND status = $4"
        args.append(status)
    rows = await db.fetch(
        f"SELECT {_JOB_COLUMNS}, submitted_position FROM jobs WHERE {where}"
        " ORDER BY submitted_position DESC LIMIT $3",
        *args,
    )
    return _page(rows, limit, _job, lambda r: encode_cursor("jobs", r["submitted_position"]))


async def get_job(db: Db, user_id: str, job_id: UUID | str) -> Job | None:
    """One of the user's jobs with its images; None if there is no such job of theirs."""
    try:
        job_uuid = job_id if isinstance(job_id, UUID) else UUID(job_id)
    except ValueError:
        return None
    async with _snapshot(db) as conn:
        row = await conn.fetchrow(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE user_id = $1 AND job_id = $2",
            user_id,
            job_uuid,
        )
        if row is None:
            return None
        images = await conn.fetch(
            f"SELECT {_IMAGE_COLUMNS} FROM images"
            " WHERE user_id = $1 AND job_id = $2 AND deleted_at IS NULL ORDER BY idx",
            user_id,
            job_uuid,
        )
    return _job(row, tuple(_image(i) for i in images))


# --------------------------------------------------------------------------------- images


async def list_images(
    db: Db,
    user_id: str,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
    *,
    board_id: UUID | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    starred: bool | None = None,
    category: str | None = None,
    origin: str | None = None,
    is_intermediate: bool | None = False,
) -> Page[ImageDetail]:
    """The user's images (not deleted), newest first; only those on ``board_id``, created in
    [created_after, created_before), starred or not, of one category or origin, intermediate
    or not, when given (None: either). By default intermediates are left out, as InvokeAI's
    lists do. The filters narrow the same order, so a cursor from a filtered page continues it
    (a page's cursor is for the same filters)."""
    limit = _check_limit(limit)
    if category is not None and category not in _IMAGE_CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(sorted(_IMAGE_CATEGORIES))}")
    if origin is not None and origin not in _IMAGE_ORIGINS:
        raise ValueError(f"origin must be one of {', '.join(sorted(_IMAGE_ORIGINS))}")
    position, index = (
        decode_cursor(cursor, "images", int, int) if cursor else (_AFTER_EVERYTHING, 0)
    )
    rows = await db.fetch(
        f"{_IMAGE_DETAIL}"
        " WHERE i.user_id = $1 AND i.deleted_at IS NULL AND (i.position, i.idx) < ($2, $3)"
        " AND ($5::uuid IS NULL OR EXISTS (SELECT 1 FROM board_images b"
        "   WHERE b.board_id = $5 AND b.user_id = $1 AND b.image_name = i.name))"
        " AND ($6::timestamptz IS NULL OR i.created_at >= $6)"
        " AND ($7::timestamptz IS NULL OR i.created_at < $7)"
        " AND ($8::boolean IS NULL OR i.starred = $8)"
        " AND ($9::text IS NULL OR i.image_category = $9)"
        " AND ($10::text IS NULL OR i.image_origin = $10)"
        " AND ($11::boolean IS NULL OR i.is_intermediate = $11)"
        " ORDER BY i.position DESC, i.idx DESC LIMIT $4",
        user_id,
        position,
        index,
        limit + 1,
        board_id,
        created_after,
        created_before,
        starred,
        category,
        origin,
        is_intermediate,
    )
    return _page(
        rows, limit, _image_detail, lambda r: encode_cursor("images", r["position"], r["index"])
    )


async def get_image(db: Db, user_id: str, name: str) -> ImageDetail | None:
    """One of the user's images (not deleted, intermediate or not); None: no such image."""
    row = await db.fetchrow(
        f"{_IMAGE_DETAIL} WHERE i.user_id = $1 AND i.name = $2 AND i.deleted_at IS NULL",
        user_id,
        name,
    )
    return None if row is None else _image_detail(row)


async def image_source(db: Db, user_id: str, name: str) -> ImageSource | None:
    """The job that produced the user's image ``name``, or the upload it is, deleted or not
    (a repeated delete finds it, and the aggregate's own record says whether it is deleted);
    None: the user has no such image."""
    row = await db.fetchrow(
        "SELECT job_id, upload_id FROM images WHERE user_id = $1 AND name = $2", user_id, name
    )
    return None if row is None else ImageSource(row["job_id"], row["upload_id"])


async def storage_used_bytes(db: Db, user_id: str) -> int:
    """Bytes of the user's images, completed uploads and verified models that are not deleted
    (the plan's storage quota)."""
    used = await db.fetchval(  # an upload's image row is not counted: its uploads row is
        "SELECT (SELECT coalesce(sum(size_bytes), 0) FROM images"
        "        WHERE user_id = $1 AND deleted_at IS NULL AND upload_id IS NULL)"
        " + (SELECT coalesce(sum(size_bytes), 0) FROM uploads"
        "    WHERE user_id = $1 AND status = 'completed' AND deleted_at IS NULL)"
        " + (SELECT coalesce(sum(size_bytes), 0) FROM user_models"
        "    WHERE user_id = $1 AND status = 'verified' AND deleted_at IS NULL)",
        user_id,
    )
    return int(used)


# ---------------------------------------------------------------------------- users, plans

_PLAN_FIELDS = tuple(f.name for f in dataclasses.fields(Plan))


async def list_plans(db: Db) -> tuple[Plan, ...]:
    columns = ", ".join(_PLAN_FIELDS)
    rows = await db.fetch(f"SELECT {columns} FROM subscription_plans ORDER BY display_order")
    return tuple(Plan(**r) for r in rows)


async def get_user(db: Db, user_id: str) -> User | None:
    """The user's profile, the plan whose entitlements apply now (negotiated terms, if any,
    in ``subscription.custom_terms``) and their subscription."""
    row = await db.fetchrow(
        "SELECT u.user_id, u.created_at, s.plan AS subscribed_plan, s.status, s.period_start,"
        " s.period_end, s.cancel_at, s.external_id, s.customer_id, s.custom_terms,"
        f" {', '.join(f'p.{c}' for c in _PLAN_FIELDS)}"
        " FROM users AS u"
        " JOIN user_subscriptions AS s ON s.user_id = u.user_id"
        " JOIN subscription_plans AS p ON p.slug = u.plan"
        " WHERE u.user_id = $1",
        user_id,
    )
    if row is None:
        return None
    terms = row["custom_terms"]
    return User(
        user_id=row["user_id"],
        created_at=row["created_at"],
        plan=Plan(**{c: row[c] for c in _PLAN_FIELDS}),
        subscription=Subscription(
            plan=row["subscribed_plan"],
            status=row["status"],
            period_start=row["period_start"],
            period_end=row["period_end"],
            cancel_at=row["cancel_at"],
            external_id=row["external_id"],
            customer_id=row["customer_id"],
            custom_terms=None if terms is None else json.loads(terms),
        ),
    )


def _like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search_users(
    db: Db, query: str, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[UserSummary]:
    """Admin: users whose id contains ``query`` (case-insensitive), by user id."""
    limit = _check_limit(limit)
    (after,) = decode_cursor(cursor, "users", str) if cursor else ("",)
    rows = await db.fetch(
        "SELECT user_id, plan, subscription_status, created_at FROM users"
        " WHERE user_id ILIKE $1 AND user_id > $2 ORDER BY user_id LIMIT $3",
        _like_pattern(query),
        after,
        limit + 1,
    )
    return _page(
        rows,
        limit,
        lambda r: UserSummary(**r),
        lambda r: encode_cursor("users", r["user_id"]),
    )
