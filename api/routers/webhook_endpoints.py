"""Webhook endpoints: where a user's events are POSTed, signed (Standard Webhooks).

Create (the secret is in that answer only, and in a replay of its Idempotency-Key), list, read,
update or disable/enable (PATCH, Stripe's ``disabled``), rotate the secret, delete; each
endpoint's delivery log and a manual redelivery. Rows live in ``webhook_endpoints`` (written
here, not event-sourced, like api_keys); the delivery process (`pinksea webhooks`) records and
sends the deliveries. Every URL passes the SSRF rules (workflows/webhooks/urls.py) after DNS
resolution here, and again before each attempt there.

The secret for a submission's own ``webhook`` (POST /v1/jobs) is the user's default secret:
``GET /v1/webhooks/default/secret``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import AfterValidator, BaseModel, Field

from api import problems as p
from api.deps import CurrentUser, IdempotencyKey, Paging, ServicesDep, rate_limit
from api.problems import ProblemError, problem_responses
from api.schemas import Page, Strict, View
from api.services import Services, now
from domain.ids import PINKSEA_NAMESPACE, account_id
from domain.job_webhooks import WEBHOOK_EVENTS, WebhookEventType, WebhookUrl
from read_models import webhooks as q
from read_models.queries import InvalidCursor
from workflows.webhooks.urls import UnsafeWebhookUrl, resolve

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhook endpoints"])
secret_router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

MAX_ENDPOINTS = 16  # per user: each event is sent to every matching one
DESCRIPTION_CHARS_MAX = 500
# A rotated secret keeps signing beside the new one this long unless the rotation says (as
# Stripe's "roll secret" offers up to a week, default a day).
ROLLOVER_DEFAULT_S = 24 * 3600
ROLLOVER_MAX_S = 7 * 24 * 3600
ERRORS = (401, 403, 429, 503)
EndpointId = Annotated[str, Path(pattern=r"^we_[0-9a-f]{32}$")]
DeliveryId = Annotated[str, Path(pattern=r"^whd_[0-9a-f]{32}$")]


# An event type, or `*` for all: a closed set in the contract (an enum for generated clients).
EnabledEvent = Literal[WebhookEventType, "*"]
# Stored once each, in order: the same filter always reads back the same.
EnabledEvents = Annotated[
    list[EnabledEvent],
    AfterValidator(lambda events: sorted(set(events))),
    Field(min_length=1, max_length=len(WEBHOOK_EVENTS) + 1),
]


class EndpointRequest(Strict):
    url: WebhookUrl
    enabled_events: EnabledEvents = Field(
        description=f"event types ({', '.join(WEBHOOK_EVENTS)}), or `*` for all",
        examples=[["job.completed", "job.failed"]],
    )
    description: str = Field("", max_length=DESCRIPTION_CHARS_MAX, pattern=r"^[^\x00]*$")


class EndpointUpdate(Strict):
    url: WebhookUrl | None = None
    enabled_events: EnabledEvents | None = None
    description: str | None = Field(None, max_length=DESCRIPTION_CHARS_MAX, pattern=r"^[^\x00]*$")
    disabled: bool | None = Field(None, description="true: no events are sent until false again")


class EndpointView(View):
    id: str = Field(validation_alias="endpoint_id")
    url: str
    description: str
    enabled_events: list[EnabledEvent]
    status: Literal["enabled", "disabled"]
    created_at: datetime
    updated_at: datetime
    previous_secret_expires_at: datetime | None = Field(
        description="until then, attempts are also signed with the secret a rotation replaced"
    )


class EndpointWithSecret(EndpointView):
    secret: str = Field(description="whsec_...: verifies the signatures; shown here only")


class SecretView(BaseModel):
    secret: str


class DeliveryView(View):
    id: str = Field(validation_alias="delivery_id")
    event_id: str = Field(description="the webhook-id header; the same on every attempt")
    event_type: WebhookEventType
    status: Literal["pending", "delivered", "failed"] = Field(
        description="failed: the retry schedule is used up (POST .../retry sends it again)"
    )
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    occurred_at: datetime
    created_at: datetime


def _view(row: object, cls: type[EndpointView] = EndpointView, **extra: object) -> EndpointView:
    data = dict(row)  # type: ignore[call-overload]
    data["status"] = "disabled" if data.pop("disabled") else "enabled"
    return cls.model_validate({**data, **extra})


async def check_webhook_url(svc: Services, url: str) -> None:
    """422 unless ``url`` passes the SSRF rules now (the delivery process checks again)."""
    try:
        await resolve(url, allow_loopback=svc.settings.webhooks_allow_loopback)
    except UnsafeWebhookUrl as e:
        raise ProblemError(
            p.INVALID_REQUEST, p.sentence(f"The webhook URL is refused: {e}")
        ) from None


def _digest(body: EndpointRequest) -> str:
    return hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest()


def _not_found() -> ProblemError:
    return ProblemError(p.NOT_FOUND, "No such webhook endpoint.")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=EndpointWithSecret,
    summary="Register a webhook endpoint",
    description="The URL must be https and reach a public address (checked after DNS "
    "resolution). The signing secret is in this response only (and in a replay of the same "
    f"Idempotency-Key). At most {MAX_ENDPOINTS} endpoints per user.",
    responses=problem_responses(*ERRORS, 409, 413, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def create(
    body: EndpointRequest,
    principal: CurrentUser,
    svc: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> EndpointView:
    user = principal.user_id
    await check_webhook_url(svc, body.url)
    endpoint_id = "we_" + (
        uuid.uuid5(PINKSEA_NAMESPACE, f"webhook-endpoint\x1f{user}\x1f{idempotency_key}").hex
        if idempotency_key
        else uuid.uuid4().hex
    )
    at = now()
    async with svc.pool.acquire() as conn, conn.transaction():
        # One user's creations are serialised, so the cap holds.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('webhooks:' || $1))", user)
        existing = await conn.fetchrow(
            f"SELECT {q.ENDPOINT_COLUMNS}, secret, request_digest FROM webhook_endpoints"
            " WHERE endpoint_id = $1 AND user_id = $2",
            endpoint_id,
            user,
        )
        if existing is not None:
            if existing["request_digest"] != _digest(body):
                raise ProblemError(
                    p.IDEMPOTENCY_CONFLICT,
                    "This Idempotency-Key was used for a different request; use a new key.",
                )
            response.headers["Idempotent-Replayed"] = "true"
            response.headers["Location"] = f"{router.prefix}/{endpoint_id}"
            row = {k: v for k, v in existing.items() if k != "request_digest"}
            return _view(row, EndpointWithSecret)
        count = await conn.fetchval(
            "SELECT count(*) FROM webhook_endpoints WHERE user_id = $1", user
        )
        if count >= MAX_ENDPOINTS:
            raise ProblemError(
                p.INVALID_TRANSITION,
                f"You have {MAX_ENDPOINTS} webhook endpoints, the most allowed; delete one first.",
            )
        row = await conn.fetchrow(
            "INSERT INTO webhook_endpoints (endpoint_id, user_id, account_id, url, description,"
            " enabled_events, secret, created_at, updated_at, request_digest)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)"
            f" RETURNING {q.ENDPOINT_COLUMNS}, secret",
            endpoint_id,
            user,
            account_id(user),
            body.url,
            body.description,
            body.enabled_events,
            q.new_secret(),
            at,
            _digest(body),
        )
    response.headers["Location"] = f"{router.prefix}/{endpoint_id}"
    return _view(row, EndpointWithSecret)


@router.get(
    "",
    response_model=Page[EndpointView],
    summary="Your webhook endpoints (never their secrets), newest first",
    responses=problem_responses(*ERRORS, 422),
    dependencies=[Depends(rate_limit("query"))],
)
async def list_all(principal: CurrentUser, svc: ServicesDep, paging: Paging) -> Page[EndpointView]:
    try:
        page = await q.list_endpoints(svc.pool, principal.user_id, paging.cursor, paging.limit)
    except InvalidCursor:
        raise ProblemError(
            p.INVALID_REQUEST, "The cursor is not one this list handed out; start over."
        ) from None
    return Page[EndpointView](items=[_view(r) for r in page.items], next_cursor=page.next_cursor)


@router.get(
    "/{endpoint_id}",
    response_model=EndpointView,
    summary="One webhook endpoint",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("query"))],
)
async def get(endpoint_id: EndpointId, principal: CurrentUser, svc: ServicesDep) -> EndpointView:
    row = await q.get_endpoint(svc.pool, principal.user_id, endpoint_id)
    if row is None:
        raise _not_found()
    return _view(row)


@router.patch(
    "/{endpoint_id}",
    response_model=EndpointView,
    summary="Change a webhook endpoint, or disable and enable it",
    description="Only the fields sent change. `disabled: true` stops its deliveries (those "
    "pending wait) until `disabled: false`.",
    responses=problem_responses(*ERRORS, 404, 413, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def update(
    endpoint_id: EndpointId, body: EndpointUpdate, principal: CurrentUser, svc: ServicesDep
) -> EndpointView:
    if body.url is not None:
        await check_webhook_url(svc, body.url)
    row = await svc.pool.fetchrow(
        "UPDATE webhook_endpoints SET url = coalesce($3, url),"
        " enabled_events = coalesce($4, enabled_events), description = coalesce($5, description),"
        " disabled = coalesce($6, disabled), updated_at = $7"
        f" WHERE user_id = $1 AND endpoint_id = $2 RETURNING {q.ENDPOINT_COLUMNS}",
        principal.user_id,
        endpoint_id,
        body.url,
        body.enabled_events,
        body.description,
        body.disabled,
        now(),
    )
    if row is None:
        raise _not_found()
    return _view(row)


class SecretRotation(Strict):
    expires_in_s: int = Field(
        ROLLOVER_DEFAULT_S,
        ge=0,
        le=ROLLOVER_MAX_S,
        description="how long the replaced secret keeps signing beside the new one (0: not at "
        "all; default 24 hours, at most 7 days)",
    )


@router.post(
    "/{endpoint_id}/rotate-secret",
    response_model=EndpointWithSecret,
    summary="Replace an endpoint's signing secret, the old one still signing for a while",
    description="The new secret is shown here only. Until `previous_secret_expires_at`, every "
    "attempt is signed with both secrets (two signatures in `webhook-signature`), so the "
    "receiver can switch at its own pace; a rotation during that window drops the oldest. "
    "No body: the old secret lasts 24 hours.",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def rotate_secret(
    endpoint_id: EndpointId,
    principal: CurrentUser,
    svc: ServicesDep,
    body: SecretRotation | None = None,
) -> EndpointView:
    at = now()
    expires_in_s = (body or SecretRotation()).expires_in_s
    row = await svc.pool.fetchrow(
        "UPDATE webhook_endpoints SET"
        " previous_secret = CASE WHEN $5::int > 0 THEN secret END,"
        " previous_secret_expires_at ="
        "   CASE WHEN $5::int > 0 THEN $4::timestamptz + $5::int * interval '1 second' END,"
        " secret = $3, updated_at = $4"
        f" WHERE user_id = $1 AND endpoint_id = $2 RETURNING {q.ENDPOINT_COLUMNS}, secret",
        principal.user_id,
        endpoint_id,
        q.new_secret(),
        at,
        expires_in_s,
    )
    if row is None:
        raise _not_found()
    return _view(row, EndpointWithSecret)


@router.delete(
    "/{endpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a webhook endpoint and its delivery log",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def delete(endpoint_id: EndpointId, principal: CurrentUser, svc: ServicesDep) -> Response:
    deleted = await svc.pool.fetchval(
        "DELETE FROM webhook_endpoints WHERE user_id = $1 AND endpoint_id = $2"
        " RETURNING endpoint_id",
        principal.user_id,
        endpoint_id,
    )
    if deleted is None:
        raise _not_found()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=Page[DeliveryView],
    summary="An endpoint's delivery log, newest first",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("query"))],
)
async def list_deliveries(
    endpoint_id: EndpointId, principal: CurrentUser, svc: ServicesDep, paging: Paging
) -> Page[DeliveryView]:
    if await q.get_endpoint(svc.pool, principal.user_id, endpoint_id) is None:
        raise _not_found()
    try:
        page = await q.list_deliveries(
            svc.pool, principal.user_id, endpoint_id, paging.cursor, paging.limit
        )
    except InvalidCursor:
        raise ProblemError(
            p.INVALID_REQUEST, "The cursor is not one this list handed out; start over."
        ) from None
    return Page[DeliveryView](
        items=[DeliveryView.model_validate(dict(r)) for r in page.items],
        next_cursor=page.next_cursor,
    )


@router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryView,
    summary="Send a delivery again now",
    description="The delivery is due at once (same body, same webhook-id); the delivery "
    "process makes the attempt.",
    responses=problem_responses(*ERRORS, 404, 422),
    dependencies=[Depends(rate_limit("command"))],
)
async def retry_delivery(
    endpoint_id: EndpointId, delivery_id: DeliveryId, principal: CurrentUser, svc: ServicesDep
) -> DeliveryView:
    row = await q.retry_delivery(svc.pool, principal.user_id, endpoint_id, delivery_id, now())
    if row is None:
        raise ProblemError(p.NOT_FOUND, "No such delivery of this webhook endpoint.")
    return DeliveryView.model_validate(dict(row))


@secret_router.get(
    "/default/secret",
    response_model=SecretView,
    summary="The secret that signs your jobs' own webhooks",
    description="A submission's `webhook` (POST /v1/jobs) is signed with this secret.",
    responses=problem_responses(*ERRORS),
    dependencies=[Depends(rate_limit("query"))],
)
async def default_secret(principal: CurrentUser, svc: ServicesDep) -> SecretView:
    return SecretView(secret=await q.default_secret(svc.pool, principal.user_id, now()))
