"""Plans that sell: Stripe Checkout and the customer portal, and Stripe's webhooks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import stripe
from fastapi import APIRouter, Depends, Header, Request
from pydantic import BaseModel

from api import problems as p
from api.billing.stripe_events import handle_stripe_event
from api.deps import CurrentUser, ServicesDep, rate_limit
from api.problems import ProblemError, problem_responses
from api.services import Services
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
)
async def checkout(
    body: CheckoutRequest, principal: CurrentUser, svc: ServicesDep
) -> RedirectResponse:
    price = svc.settings.stripe_price_ids.get(body.plan)
    if price is None:
        raise ProblemError(p.INVALID_REQUEST, f"The {body.plan} plan is not on sale; pick another.")
    customer = await _customer(svc, principal.user_id)
    metadata = {"user_id": principal.user_id, "plan": body.plan}
    session = await svc.blocking(
        stripe_client(svc.settings).v1.checkout.sessions.create,
        params={
            "mode": "subscription",
            "customer": customer,
            "client_reference_id": principal.user_id,
            "line_items": [{"price": price, "quantity": 1}],
            "subscription_data": {"metadata": metadata},  # copied onto its invoices
            "metadata": metadata,
            "success_url": svc.settings.checkout_success_url,
            "cancel_url": svc.settings.checkout_cancel_url,
        },
    )
    return RedirectResponse(url=str(session.url), session_id=str(session.id))


@router.post(
    "/v1/billing/portal",
    response_model=RedirectResponse,
    responses=problem_responses(401, 429, 503),
    dependencies=[Depends(rate_limit("command"))],
    summary="Open the Stripe customer portal (payment methods, invoices, cancellation)",
)
async def portal(principal: CurrentUser, svc: ServicesDep) -> RedirectResponse:
    customer = await _customer(svc, principal.user_id)
    session = await svc.blocking(
        stripe_client(svc.settings).v1.billing_portal.sessions.create,
        params={"customer": customer, "return_url": svc.settings.checkout_cancel_url},
    )
    return RedirectResponse(url=str(session.url), session_id=str(session.id))


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
        event = stripe.Webhook.construct_event(
            payload, stripe_signature, secret, tolerance=SIGNATURE_TOLERANCE_S
        )
    except (stripe.SignatureVerificationError, ValueError) as e:
        raise ProblemError(
            p.BAD_REQUEST,
            f"The Stripe signature does not verify ({e}); send the raw body Stripe signed, "
            "within 5 minutes of signing.",
        ) from None
    data: dict[str, Any] = event.to_dict()
    outcome = await svc.command(handle_stripe_event, svc.application, data, _plan_for_price(svc))
    if outcome.applied:
        await _record_payment(svc, data)
    return WebhookAck(received=True, applied=outcome.applied, action=outcome.action)


def _plan_for_price(svc: Services) -> dict[str, str]:
    return {price: plan for plan, price in svc.settings.stripe_price_ids.items()}


async def _record_payment(svc: Services, event: dict[str, Any]) -> None:
    """The payments read model: what Stripe says was paid, failed or refunded. Keyed by the
    Stripe event id, so a repeat delivery writes nothing twice."""
    kind, obj = event["type"], event["data"]["object"]
    status = {"invoice.paid": "paid", "invoice.payment_failed": "failed"}.get(kind)
    if kind == "charge.refunded":
        if not obj.get("invoice"):
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
        int(obj.get("amount_paid") or obj.get("amount_due") or 0),
        str(obj.get("currency") or "usd"),
        at,
        at if status == "paid" else None,
    )
