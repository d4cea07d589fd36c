"""FastAPI dependencies: services, the caller, rate limits, read-your-writes, paging."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

import asyncpg
import structlog
from fastapi import Depends, Header, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api import problems as p
from api.auth import AuthError, Principal, api_key_matches, api_key_prefix, looks_like_api_key
from api.problems import ProblemError
from api.ratelimit import address_identity
from api.services import Services, now
from api.stream_tokens import TOKEN_LENGTH_MAX, InvalidStreamToken, StreamTokens
from domain.plans import PLANS
from projections.consistency import first_behind
from projections.registry import get_projection
from workflows.notifier.preferences import remember_address

MAX_POSITION = 2**63 - 1
log = structlog.get_logger("api.deps")


# Dependencies are async even when they need not be: FastAPI runs sync ones on a thread pool.
async def services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]

_bearer = HTTPBearer(
    auto_error=False,
    description="A Cognito (or `pinksea dev-token`) JWT, or an API key `psk_...`.",
)
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key `psk_...`.")


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        p.UNAUTHORIZED,
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="pinksea", error="invalid_token"'},
    )


async def authenticate(
    request: Request,
    svc: ServicesDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    # Authorization wins when both are sent: it is the primary scheme.
    token = (bearer.credentials if bearer is not None else None) or api_key
    if not token:
        raise ProblemError(
            p.UNAUTHORIZED,
            "Send 'Authorization: Bearer <token>' with a JWT or an API key.",
            headers={"WWW-Authenticate": 'Bearer realm="pinksea"'},
        )
    if looks_like_api_key(token):
        principal = await _principal_from_api_key(request, svc, token)
    else:
        try:
            principal = await svc.verifier.verify(token)
        except AuthError as e:
            raise _unauthorized(f"The token was refused: {e.detail}.") from None
        await svc.ensure_registered(principal.user_id)
        await _remember_address(svc, principal)
    await _refuse_deactivated(svc, principal.user_id)
    request.state.principal = principal
    return principal


async def _refuse_deactivated(svc: Services, user_id: str) -> None:
    # Deactivation stops tokens, API keys and stream tokens at once (api/deactivation.py).
    if await svc.deactivations.is_deactivated(user_id):
        raise ProblemError(
            p.ACCOUNT_DEACTIVATED,
            "This account is deactivated: its tokens and API keys are refused. "
            "Contact support to have it reactivated.",
        )


async def _remember_address(svc: Services, principal: Principal) -> None:
    """Low-balance e-mails go to the e-mail claim of the user's latest sign-in: record a new
    one, once per process and address. Best effort: a database that does not answer must not
    refuse a request that might not need it; a later request records the address."""
    if not principal.email or svc.addresses.get(principal.user_id) == principal.email:
        return
    try:
        await remember_address(svc.pool, principal.user_id, principal.email, now())
    except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as e:
        log.warning("sign-in e-mail not recorded", user_id=principal.user_id, error=repr(e))
        return
    svc.addresses.put(principal.user_id, principal.email)


async def _principal_from_api_key(request: Request, svc: Services, key: str) -> Principal:
    prefix = api_key_prefix(key)
    refused = _unauthorized("The API key is unknown, revoked or expired; create a new one.")
    row = None
    if prefix is not None:
        row = await svc.pool.fetchrow(
            "SELECT key_id, user_id, hash, expires_at, revoked_at FROM api_keys WHERE prefix = $1",
            prefix,
        )
    at = now()
    if (
        row is None
        or not api_key_matches(key, row["hash"])
        or row["revoked_at"] is not None
        or (row["expires_at"] is not None and row["expires_at"] <= at)
    ):
        await _limit_key_guessing(svc, request, prefix)
        raise refused
    user_id: str = row["user_id"]
    plan = await svc.plan_of(user_id)
    if not PLANS[plan].api_access:
        raise ProblemError(
            p.NO_API_ACCESS,
            f"Your {plan} plan has no API access; upgrade to Pro or above to use API keys.",
        )
    # Recorded at most once a minute per key: usage tracking must not cost a write per call.
    await svc.pool.execute(
        "UPDATE api_keys SET last_used_at = $2 WHERE key_id = $1"
        " AND (last_used_at IS NULL OR last_used_at < $2::timestamptz - interval '60 seconds')",
        row["key_id"],
        at,
    )
    return Principal(user_id=user_id, is_admin=False, via="api_key", key_id=str(row["key_id"]))


async def _limit_key_guessing(svc: Services, request: Request, prefix: str | None) -> None:
    """A failed API-key attempt counts against the client's address (the ``auth`` group of
    api/ratelimit.py; behind the load balancer the address is the one its X-Forwarded-For
    names, api/app.py) and against the key prefix it tried (``auth_key``); past either bound
    a failed attempt is a 429 instead of a 401.

    Only failures are limited: a valid key is accepted whatever its address or prefix has
    seen, so nobody locks out another customer (one behind the same NAT, or the owner of a
    prefix someone else tries secrets for). That costs each junk attempt one indexed lookup,
    as much as any API-key request; refusing before the lookup would refuse the valid keys
    too. The secrets are 32 random bytes: the bounds slow down noise, nothing can be guessed.
    Like every limit here they fail open without Redis."""
    if not svc.settings.rate_limit_enabled:
        return
    address = address_identity(request.client.host if request.client else None)
    limiter = svc.rate_limiter
    by_address = await limiter.hit("auth", address, "trial")
    by_prefix = await limiter.hit("auth_key", prefix, "trial") if prefix is not None else None
    if by_address is not None and not by_address.allowed:
        raise ProblemError(
            p.RATE_LIMITED,
            f"More than {by_address.limit} failed API-key attempts a minute came from your "
            f"address; retry in {by_address.retry_after_s} s with a valid key.",
            headers=by_address.headers(),
        )
    if by_prefix is not None and not by_prefix.allowed:
        raise ProblemError(
            p.RATE_LIMITED,
            f"More than {by_prefix.limit} failed attempts a minute used the key {prefix}; "
            f"retry in {by_prefix.retry_after_s} s with a valid key.",
            headers=by_prefix.headers(),
        )


CurrentUser = Annotated[Principal, Depends(authenticate)]


def stream_tokens(request: Request, svc: Services) -> StreamTokens:
    """This app's stream-token signer (its key is read once, from the database)."""
    tokens: StreamTokens | None = getattr(request.app.state, "stream_tokens", None)
    if tokens is None or tokens.pool is not svc.pool:
        tokens = StreamTokens(svc.pool)
        request.app.state.stream_tokens = tokens
    return tokens


async def stream_caller(
    request: Request,
    svc: ServicesDep,
    job_id: UUID,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
    access_token: Annotated[
        str | None,
        Query(
            max_length=TOKEN_LENGTH_MAX,
            description="A token from POST /v1/jobs/{job_id}/stream-token, for clients that "
            "cannot send headers (EventSource); valid for this job only, a few minutes.",
        ),
    ] = None,
) -> Principal:
    """The caller of a job's event stream: the usual credentials, or a stream token for
    exactly this job (``access_token``)."""
    if access_token is None:
        return await authenticate(request, svc, bearer, api_key)
    try:
        user_id = await stream_tokens(request, svc).verify(access_token, job_id, now())
    except InvalidStreamToken as e:
        raise _unauthorized(
            f"The stream token was refused ({e}); get a new one with "
            f"POST /v1/jobs/{job_id}/stream-token."
        ) from None
    await _refuse_deactivated(svc, user_id)
    principal = Principal(user_id=user_id, is_admin=False, via="stream_token")
    request.state.principal = principal
    return principal


StreamCaller = Annotated[Principal, Depends(stream_caller)]


async def require_admin(principal: CurrentUser) -> Principal:
    if not principal.is_admin:
        raise ProblemError(
            p.ADMIN_REQUIRED,
            "This needs an account in the admin group; sign in as an admin.",
        )
    return principal


AdminUser = Annotated[Principal, Depends(require_admin)]


def rate_limit(group: str) -> Callable[..., Awaitable[None]]:
    """A dependency counting this request against the caller's limit for ``group``."""

    async def dependency(request: Request, svc: ServicesDep, principal: CurrentUser) -> None:
        await _count_request(request, svc, principal, group)

    return dependency


async def stream_rate_limit(request: Request, svc: ServicesDep, principal: StreamCaller) -> None:
    """``rate_limit("stream")`` for a caller that may hold a stream token."""
    await _count_request(request, svc, principal, "stream")


async def _count_request(request: Request, svc: Services, principal: Principal, group: str) -> None:
    if not svc.settings.rate_limit_enabled:
        return
    plan = "enterprise" if group == "admin" else await svc.plan_of(principal.user_id)
    decision = await svc.rate_limiter.hit(group, principal.user_id, plan)
    if decision is None:
        return  # Redis unavailable: fail open (see api/ratelimit.py)
    headers = decision.headers()
    request.state.extra_headers = headers  # added to the response by the edge middleware
    if not decision.allowed:
        raise ProblemError(
            p.RATE_LIMITED,
            f"You sent more than {decision.limit} such requests a minute; "
            f"retry in {decision.retry_after_s} s or upgrade your plan for higher limits.",
            headers=headers,
        )


def consistent(*projections: str) -> Callable[..., Awaitable[int | None]]:
    """``X-Min-Position``: answer only once every one of ``projections`` (those the answer
    reads) has applied that store position."""
    assert projections, "a consistent read names the projections it reads"
    for name in projections:
        get_projection(name)  # a KeyError at import for a name no projection has

    async def lagging(svc: Services, position: int, timeout_s: float) -> str | None:
        return await first_behind(
            svc.pool, svc.settings, projections, position, timeout_s=timeout_s
        )

    async def dependency(
        svc: ServicesDep,
        # A string of digits in the contract: HTTP header values are strings, and a generated
        # client typed `int` here could not send it (httpx refuses non-str header values).
        x_min_position_header: Annotated[
            str | None,
            Header(
                alias="X-Min-Position",
                pattern=r"^[0-9]{1,19}$",
                description="A `position` returned by a command (digits): the answer includes "
                "its effect.",
            ),
        ] = None,
    ) -> int | None:
        if not x_min_position_header:
            return None
        x_min_position = int(x_min_position_header)
        if x_min_position > MAX_POSITION:
            raise ProblemError(p.INVALID_REQUEST, f"X-Min-Position must be at most {MAX_POSITION}.")
        if not x_min_position:
            return None
        if await lagging(svc, x_min_position, timeout_s=0) is None:
            return x_min_position
        newest = await svc.command(svc.application.current_position)
        if x_min_position > newest:
            # No command returned this position: waiting would never end well.
            raise ProblemError(
                p.INVALID_REQUEST,
                f"X-Min-Position {x_min_position} is past the newest event ({newest}); "
                "send a position that a command returned.",
            )
        behind = await lagging(svc, x_min_position, svc.settings.read_your_writes_timeout_s)
        if behind is not None:
            raise ProblemError(
                p.NOT_YET_CONSISTENT,
                f"The {behind} view has not caught up with position {x_min_position} yet; "
                "retry after the Retry-After delay.",
                headers={"Retry-After": "1"},
            )
        return x_min_position

    return dependency


@dataclass(frozen=True)
class PageParams:
    cursor: str | None
    limit: int


async def page_params(
    cursor: Annotated[
        str | None,
        Query(max_length=512, description="`next_cursor` of the previous page."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Items per page.")] = 20,
) -> PageParams:
    return PageParams(cursor, limit)


Paging = Annotated[PageParams, Depends(page_params)]


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Repeat a request safely: the same key and body give the first result; "
        "the same key with another body is a 409.",
    ),
]
