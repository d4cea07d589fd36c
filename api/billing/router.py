"""Plans that sell: Stripe Checkout and the customer portal, and Stripe's webhooks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import stripe
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel, Field

from api import problems as p
from api.billing import idempotency
from api.billing.stripe_events import handle_stripe_event, reject_unreadable
from api.deps import (
    AdminUser,
    CurrentUser,
    IdempotencyKey,
    ServicesDep,
    consistent,
    rate_limit,
)
from api.problems import ProblemError, problem_responses
from api.schemas import USER_ID, Strict
from api.services import Services, now
from domain.application import CommandResult
from domain.parameters import NO_NUL
from infra.health import stripe_client

router = APIRouter(tags=["billing"])

# Stripe's own default: a signed payload older than this is a replay.
SIGNATURE_TOLERANCE_S = 300


class CheckoutRequest(BaseModel):
    plan: Literal["starter", "pro", "studio"]


class RedirectResponse(BaseModel):
    url: str
    session_id: str | None = None


class WebhookAck(BaseModel):
    received: bool
    applied: bool
    action: str


async def _customer(svc: Services, user_id: str) -> str:
    """The user's one Stripe customer, created on first need and remembered on their
    subscription (a repeat finds it there)."""
    sub = await svc.command(svc.application.subscription, user_id)
    if sub.customer_id:
        return str(sub.customer_id)
    client = stripe_client(svc.settings)
    customer = await svc.blocking(
        client.v1.customers.create,
        params={"metadata": {"user_id": user_id}},
        options={"idempotency_key": f"pinksea-customer-{user_id}"},
    )
    await svc.command(
        svc.application.link_stripe_customer, user_id, str(customer.id), datetime.now(UTC)
    )
    return str(customer.id)


@router.post(
    "/v1/billing/checkout",
    response_model=RedirectResponse,
    responses=problem_responses(401, 409, 422, 429, 503),
    dependencies=[Depends(rate_limit("command"))],
    summary="Start a Stripe Checkout Session for a plan",
    description="With `Idempotency-Key`, a repeat with the same body within 24 hours gets the "
    "same session (`Idempotent-Replayed: true`); another body under the key is a 409.",
)
async def checkout(
    body: CheckoutRequest,
    principal: CurrentUser,
    svc: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> RedirectResponse:
    price = svc.settings.stripe_price_ids.get(body.plan)
    if price is None:
        raise ProblemError(p.INVALID_REQUEST, f"The {body.plan} plan is not on sale; pick another.")
    user_id = principal.user_id

    async def create(stripe_key: str | None) -> dict[str, Any]:
        customer = await _customer(svc, user_id)
        metadata = {"user_id": user_id, "plan": body.plan}
        session = await svc.blocking(
            stripe_client(svc.settings).v1.checkout.sessions.create,
            params={
                "mode": "subscription",
                "customer": customer,
                "client_reference_id": user_id,
                "line_items": [{"price": price, "quantity": 1}],
                "subscription_data": {"metadata": metadata},  # copied onto its invoices
                "metadata": metadata,
                "success_url": svc.settings.checkout_success_url,
                "cancel_url": svc.settings.checkout_cancel_url,
            },
            options=_stripe_options(stripe_key),
        )
        return {"url": str(session.url), "session_id": str(session.id)}

    return await _answer(svc, response, user_id, "checkout", idempotency_key, body, create)


@router.post(
    "/v1/billing/portal",
    response_model=RedirectResponse,
    responses=problem_responses(401, 409, 429, 503),
    dependencies=[Depends(rate_limit("command"))],
    summary="Open the Stripe customer portal (payment methods, invoices, cancellation)",
    description="`Idempotency-Key` as for checkout: the same session again within 24 hours.",
)
async def portal(
    principal: CurrentUser,
    svc: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> RedirectResponse:
    user_id = principal.user_id

    async def create(stripe_key: str | None) -> dict[str, Any]:
        customer = await _customer(svc, user_id)
        session = await svc.blocking(
            stripe_client(svc.settings).v1.billing_portal.sessions.create,
            params={"customer": customer, "return_url": svc.settings.checkout_cancel_url},
            options=_stripe_options(stripe_key),
        )
        return {"url": str(session.url), "session_id": str(session.id)}

    return await _answer(svc, response, user_id, "portal", idempotency_key, None, create)


async def _answer(
    svc: Services,
    response: Response,
    user_id: str,
    route: str,
    key: str | None,
    body: BaseModel | None,
    create: Callable[[str | None], Awaitable[dict[str, Any]]],
) -> RedirectResponse:
    sent = {} if body is None else body.model_dump()
    answer, replayed = await idempotency.once(
        svc, user_id=user_id, route=route, key=key, body=sent, create=create
    )
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return RedirectResponse.model_validate(answer)


def _stripe_options(stripe_key: str | None) -> dict[str, Any]:
    return {} if stripe_key is None else {"idempotency_key": stripe_key}


class HeldStripeEvent(BaseModel):
    stripe_event_id: str
    stripe_type: str
    outcome: Literal["quarantined", "rejected"]
    user_id: str | None
    customer_id: str | None
    reason: str
    received_at: datetime


@router.get(
    "/v1/admin/billing/held-events",
    response_model=list[HeldStripeEvent],
    responses=problem_responses(401, 403, 422, 429, 503),
    tags=["admin"],
    dependencies=[Depends(rate_limit("admin")), Depends(consistent("subscriptions"))],
    summary="Stripe events held for an operator (quarantined) or rejected, newest first",
    description="Quarantined: the object's customer is not the user's; nothing was applied. "
    "Rejected: signed by Stripe but malformed; nothing was applied, Stripe was answered 2xx.",
)
async def held_events(
    admin: AdminUser,
    svc: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> list[HeldStripeEvent]:
    rows = await svc.pool.fetch(
        "SELECT stripe_event_id, stripe_type, outcome, user_id, customer_id, reason, received_at"
        " FROM stripe_events_held ORDER BY received_at DESC, record_id LIMIT $1",
        limit,
    )
    return [HeldStripeEvent.model_validate(dict(r)) for r in rows]


class CustomerLinkRequest(Strict):
    customer_id: str = Field(
        pattern=r"^cus_[A-Za-z0-9_-]{1,64}$",
        examples=["cus_R2d2C3po"],
        description="the Stripe customer, checked by hand to be this user's",
    )
    reason: str = Field(min_length=1, max_length=500, pattern=NO_NUL)


class CustomerLinkResult(BaseModel):
    user_id: str
    customer_id: str
    changed: bool  # False: this customer was linked already
    position: int | None


@router.put(
    "/v1/admin/users/{user_id}/stripe-customer",
    response_model=CustomerLinkResult,
    responses=problem_responses(401, 403, 404, 409, 413, 422, 429, 503),
    tags=["admin"],
    dependencies=[Depends(rate_limit("admin"))],
    summary="Link a user's Stripe customer (to release the events quarantined for want of it)",
    description="For a user with no customer linked, whose Stripe events were quarantined "
    "(GET /v1/admin/billing/held-events): after the link, resend those events from Stripe "
    "(dashboard or `stripe events resend`) and they apply, once. A user linked to another "
    "customer is a 409: one user, one customer. Repeating it changes nothing more.",
)
async def link_customer(
    user_id: Annotated[str, Path(min_length=1, max_length=128, pattern=USER_ID)],
    body: CustomerLinkRequest,
    admin: AdminUser,
    svc: ServicesDep,
) -> CustomerLinkResult:
    actor = f"admin:{admin.user_id}"

    def run() -> CommandResult:
        linked = svc.application.subscription(user_id).customer_id  # 404 for no such user
        if linked not in (None, body.customer_id):
            raise ProblemError(
                p.INVALID_TRANSITION,
                f"User {user_id!r} is linked to Stripe customer {linked}; a user has one "
                "customer. Quarantined events of another customer stay held.",
            )
        return svc.application.link_stripe_customer(
            user_id, body.customer_id, now(), actor=actor, reason=body.reason
        )

    result = await svc.command(run)
    return CustomerLinkResult(
        user_id=user_id,
        customer_id=body.customer_id,
        changed=result.changed,
        position=result.position,
    )


@router.post(
    "/v1/webhooks/stripe",
    response_model=WebhookAck,
    responses=problem_responses(400, 503),
    summary="Stripe webhooks (signature checked on the raw body)",
)
async def stripe_webhook(
    request: Request,
    svc: ServicesDep,
    stripe_signature: str = Header(..., alias="Stripe-Signature"),
) -> WebhookAck:
    payload = await request.body()
    secret = svc.settings.stripe_webhook_secret.get_secret_value()
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8", errors="replace"),
            stripe_signature,
            secret,
            tolerance=SIGNATURE_TOLERANCE_S,
        )
    except stripe.SignatureVerificationError as e:
        raise ProblemError(
            p.BAD_REQUEST,
            f"The Stripe signature does not verify ({e}); send the raw body Stripe signed, "
            "within 5 minutes of signing.",
        ) from None
    # Signed by Stripe from here on: whatever it holds is recorded and answered 2xx (a 5xx
    # would make Stripe retry for days an event that cannot get better).
    try:
        data = json.loads(payload)
    except ValueError as e:
        data = f"the body is not JSON ({e})"
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
        reason = data if isinstance(data, str) else "the body is not an event with an id"
        digest = hashlib.sha256(payload).hexdigest()
        outcome = await svc.command(reject_unreadable, svc.application, digest, reason)
        return WebhookAck(received=True, applied=outcome.applied, action=outcome.action)
    linked = await _user_of_customer(svc, data)
    outcome = await svc.command(
        handle_stripe_event, svc.application, data, _plan_for_price(svc), linked
    )
    if outcome.applied:
        await _record_payment(svc, data)
    return WebhookAck(received=True, applied=outcome.applied, action=outcome.action)


async def _user_of_customer(svc: Services, event: dict[str, Any]) -> dict[str, str]:
    """The user the event object's customer is linked to, for objects that name no user
    (credit notes, charges). The command checks the link again in its own transaction."""
    obj = (event.get("data") or {}).get("object") if isinstance(event.get("data"), dict) else None
    customer = obj.get("customer") if isinstance(obj, dict) else None
    if not isinstance(customer, str) or not customer:
        return {}
    user = await svc.pool.fetchval(
        "SELECT user_id FROM user_subscriptions WHERE customer_id = $1 LIMIT 1", customer
    )
    return {customer: str(user)} if user else {}


def _plan_for_price(svc: Services) -> dict[str, str]:
    return {price: plan for plan, price in svc.settings.stripe_price_ids.items()}


async def _record_payment(svc: Services, event: dict[str, Any]) -> None:
    """The payments read model: what Stripe says was paid, failed or refunded. Keyed by the
    Stripe event id, so a repeat delivery writes nothing twice."""
    kind, obj = event["type"], event["data"]["object"]
    status = {"invoice.paid": "paid", "invoice.payment_failed": "failed"}.get(kind)
    if kind == "charge.refunded":
        if not isinstance(obj.get("invoice"), str):
            return
        await svc.pool.execute(
            "UPDATE payments SET status = 'refunded' WHERE stripe_invoice_id = $1", obj["invoice"]
        )
        return
    if status is None:
        return
    user = ((obj.get("parent") or {}).get("subscription_details") or {}).get("metadata", {}).get(
        "user_id"
    ) or (obj.get("subscription_details") or {}).get("metadata", {}).get("user_id")
    if not user:
        return
    at = datetime.fromtimestamp(event["created"], UTC)
    amount = next(
        (v for v in (obj.get("amount_paid"), obj.get("amount_due")) if isinstance(v, int) and v),
        0,
    )
    await svc.pool.execute(
        "INSERT INTO payments (payment_id, user_id, stripe_event_id, stripe_customer_id, "
        "stripe_invoice_id, kind, status, amount_cents, currency, created_at, paid_at) "
        "VALUES ($1, $2, $3, $4, $1, 'subscription', $5, $6, $7, $8, $9) "
        "ON CONFLICT (payment_id) DO UPDATE SET status = EXCLUDED.status, "
        "paid_at = coalesce(payments.paid_at, EXCLUDED.paid_at)",
        obj["id"],
        user,
        event["id"],
        obj.get("customer"),
        status,
        amount,
        str(obj.get("currency") or "usd"),
        at,
        at if status == "paid" else None,
    )
