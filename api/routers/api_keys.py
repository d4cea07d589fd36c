"""API keys: create (the secret is shown once), list, read, revoke.

Keys are managed from a signed-in session only (JWT): a leaked key cannot mint more keys or
revoke the owner's others. Rows live in ``api_keys`` (written here, not event-sourced).
"""

from __future__ import annotations

import uuid
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, Path, Response, status

from api import problems as p
from api.auth import Principal, new_api_key
from api.deps import CurrentUser, IdempotencyKey, Paging, ServicesDep, rate_limit
from api.problems import ProblemError, problem_responses
from api.schemas import ApiKeyCreated, ApiKeyRequest, ApiKeyView, Page
from api.services import now
from domain.ids import PINKSEA_NAMESPACE
from domain.plans import PLANS
from read_models.queries import InvalidCursor, decode_cursor, encode_cursor

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])

MAX_ACTIVE_KEYS = 20
ERRORS = (401, 403, 429, 503)


def _session_only(principal: Principal) -> None:
    if principal.via != "jwt":
        raise ProblemError(
            p.FORBIDDEN, "API keys are managed from a signed-in session, not with an API key."
        )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    summary="Create an API key (Pro plans and above)",
    description="The key is in this response only; store it now. The secret is stored only "
    "as a hash, so it cannot be shown again: repeating the request with the same "
    "Idempotency-Key is a 409 idempotency-conflict naming the key made (`key_id`, and "
    "`Location` to read it); revoke it and create another if the secret was lost.",
    responses=problem_responses(*ERRORS, 409, 413, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def create_api_key(
    body: ApiKeyRequest,
    principal: CurrentUser,
    svc: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ApiKeyCreated:
    _session_only(principal)
    user = principal.user_id
    plan = await svc.plan_of(user)
    if not PLANS[plan].api_access:
        raise ProblemError(
            p.NO_API_ACCESS,
            f"Your {plan} plan has no API access; upgrade to Pro or above to create API keys.",
        )
    at = now()
    if body.expires_at is not None and (body.expires_at.tzinfo is None or body.expires_at <= at):
        raise ProblemError(
            p.INVALID_REQUEST, "Set expires_at in the future, with a time zone, or leave it out."
        )
    key_id = (
        uuid.uuid5(PINKSEA_NAMESPACE, f"api-key\x1f{user}\x1f{idempotency_key}")
        if idempotency_key
        else uuid.uuid4()
    )
    new = new_api_key()
    async with svc.pool.acquire() as conn, conn.transaction():
        # One user's key creations are serialised, so the active-key cap holds.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('api-keys:' || $1))", user)
        existing = await conn.fetchrow(
            "SELECT key_id, user_id, name, prefix, created_at, expires_at FROM api_keys"
            " WHERE key_id = $1",
            key_id,
        )
        if existing is not None:
            if existing["name"] != body.name or existing["expires_at"] != body.expires_at:
                raise ProblemError(
                    p.IDEMPOTENCY_CONFLICT,
                    "This Idempotency-Key was used for a different request; use a new key.",
                )
            # Replaying the secret would mean storing it; a careful client learns here that
            # its first request went through, and which key it made.
            made = existing["key_id"]
            raise ProblemError(
                p.IDEMPOTENCY_CONFLICT,
                f"This Idempotency-Key already created API key {made} "
                f"({existing['prefix']}...); its secret was shown once and cannot be shown "
                "again. Use that key, or revoke it and create a new one with a new key.",
                key_id=str(made),
                prefix=existing["prefix"],
                headers={"Location": f"/v1/api-keys/{made}"},
            )
        active = await conn.fetchval(
            "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > $2)",
            user,
            at,
        )
        if active >= MAX_ACTIVE_KEYS:
            raise ProblemError(
                p.INVALID_TRANSITION,
                f"You have {MAX_ACTIVE_KEYS} active API keys, the most allowed; revoke one first.",
            )
        try:
            await conn.execute(
                "INSERT INTO api_keys (key_id, user_id, name, prefix, hash, created_at,"
                " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                key_id,
                user,
                body.name,
                new.prefix,
                new.hash,
                at,
                body.expires_at,
            )
        except asyncpg.UniqueViolationError:
            # A prefix collision (1 in 62^10): the client may simply retry.
            raise ProblemError(p.BUSY, "Retry the request.", headers={"Retry-After": "0"}) from None
    response.headers["Location"] = f"/v1/api-keys/{key_id}"
    return ApiKeyCreated(
        id=key_id,
        name=body.name,
        prefix=new.prefix,
        key=new.key,
        created_at=at,
        expires_at=body.expires_at,
    )


@router.get(
    "",
    response_model=Page[ApiKeyView],
    summary="Your API keys (never their secrets), newest first",
    responses=problem_responses(*ERRORS, 422),
    dependencies=[Depends(rate_limit("query"))],
)
async def list_api_keys(
    principal: CurrentUser, svc: ServicesDep, paging: Paging
) -> Page[ApiKeyView]:
    _session_only(principal)
    try:
        created, key_id = (
            decode_cursor(paging.cursor, "api-keys", str, str)
            if paging.cursor
            else ("infinity", "ffffffff-ffff-ffff-ffff-ffffffffffff")
        )
        rows = await svc.pool.fetch(
            f"SELECT {_VIEW_COLUMNS} FROM api_keys WHERE user_id = $1"
            " AND (created_at, key_id) < ($2::text::timestamptz, $3)"
            " ORDER BY created_at DESC, key_id DESC LIMIT $4",
            principal.user_id,
            created,
            uuid.UUID(key_id),
            paging.limit + 1,
        )
    except (InvalidCursor, ValueError, asyncpg.DataError):
        raise ProblemError(
            p.INVALID_REQUEST, "The cursor is not one this list handed out; start over."
        ) from None
    shown = rows[: paging.limit]
    next_cursor = None
    if len(rows) > paging.limit:
        last = shown[-1]
        next_cursor = encode_cursor("api-keys", last["created_at"].isoformat(), str(last["key_id"]))
    return Page[ApiKeyView](
        items=[_view(r) for r in shown],
        next_cursor=next_cursor,
    )


@router.get(
    "/{key_id}",
    response_model=ApiKeyView,
    summary="One of your live API keys (never its secret)",
    description="A revoked key is gone from here (404, saying when it was revoked), as after "
    "any DELETE; the list keeps it, with `revoked_at`, for the record.",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("query"))],
)
async def get_api_key(
    key_id: Annotated[uuid.UUID, Path()], principal: CurrentUser, svc: ServicesDep
) -> ApiKeyView:
    _session_only(principal)
    row = await svc.pool.fetchrow(
        f"SELECT {_VIEW_COLUMNS} FROM api_keys WHERE key_id = $1 AND user_id = $2",
        key_id,
        principal.user_id,
    )
    if row is None:
        raise key_not_found(key_id)
    if row["revoked_at"] is not None:
        raise ProblemError(
            p.NOT_FOUND,
            f"API key {key_id} was revoked at {row['revoked_at'].isoformat()}; revoked keys "
            "stay in GET /v1/api-keys with their revoked_at.",
        )
    return _view(row)


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Revoke an API key (at once, for every API process)",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def revoke_api_key(
    key_id: Annotated[uuid.UUID, Path()], principal: CurrentUser, svc: ServicesDep
) -> Response:
    _session_only(principal)
    # Revoking twice is fine (204 again); another user's key is simply not found.
    row = await svc.pool.fetchrow(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $3)"
        " WHERE key_id = $1 AND user_id = $2 RETURNING key_id",
        key_id,
        principal.user_id,
        now(),
    )
    if row is None:
        raise key_not_found(key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_VIEW_COLUMNS = "key_id, name, prefix, created_at, expires_at, revoked_at, last_used_at"


def _view(row: asyncpg.Record) -> ApiKeyView:
    return ApiKeyView(
        id=row["key_id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


def key_not_found(key_id: uuid.UUID) -> ProblemError:
    return ProblemError(
        p.NOT_FOUND, f"You have no API key {key_id}; list them with GET /v1/api-keys."
    )
