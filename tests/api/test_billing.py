"""Billing over HTTP: Checkout and portal (stripe-mock), signed webhooks, entitlements, and a
whole subscription month on a controllable clock."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.plans import get_plan
from tests.api.conftest import Kit, problem_type

pytestmark = pytest.mark.integration


def signed(
    kit: Kit, event: dict[str, Any], *, at: int | None = None, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """A webhook body and its Stripe-Signature header, as Stripe computes them."""
    body = json.dumps(event).encode()
    ts = at if at is not None else int(time.time())
    key = secret or kit.settings.stripe_webhook_secret.get_secret_value()
    mac = hmac.new(key.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"Stripe-Signature": f"t={ts},v1={mac}", "Content-Type": "application/json"}


async def post_event(kit: Kit, event: dict[str, Any], **kw: Any):
    body, headers = signed(kit, event, **kw)
    return await kit.client.post("/v1/webhooks/stripe", content=body, headers=headers)


def unix(t: datetime) -> int:
    return int(t.timestamp())


def event(user: str, n: int, kind: str, obj: dict[str, Any], at: datetime) -> dict[str, Any]:
    return {"id": f"evt_{user}_{n}", "type": kind, "created": unix(at), "data": {"object": obj}}


def subscription(
    user: str, price: str, start: datetime, *, cancel: bool = False, status: str = "active"
) -> dict[str, Any]:
    return {
        "id": f"sub_{user}",
        "customer": f"cus_{user}",
        "status": status,
        "cancel_at_period_end": cancel,
        "metadata": {"user_id": user},
        "items": {
            "data": [
                {
                    "price": {"id": price},
                    "current_period_start": unix(start),
                    "current_period_end": unix(start + timedelta(days=30)),
                }
            ]
        },
    }


def invoice(
    user: str, invoice_id: str, price: str, start: datetime, amount: int = 2500
) -> dict[str, Any]:
    return {
        "id": invoice_id,
        "customer": f"cus_{user}",
        "billing_reason": "subscription_cycle",
        "amount_paid": amount,
        "currency": "usd",
        "parent": {
            "subscription_details": {"subscription": f"sub_{user}", "metadata": {"user_id": user}}
        },
        "lines": {
            "data": [
                {
                    "amount": amount,
                    "price": {"id": price},
                    "period": {"start": unix(start), "end": unix(start + timedelta(days=30))},
                }
            ]
        },
    }


async def test_checkout_and_portal_create_one_customer_per_user(kit: Kit, user: str) -> None:
    first = await kit.client.post(
        "/v1/billing/checkout", json={"plan": "pro"}, headers=kit.auth(user)
    )
    assert first.status_code == 200, first.text
    assert first.json()["url"].startswith("http")
    customer = kit.app.subscription(user).customer_id
    assert customer and customer.startswith("cus_")
    again = await kit.client.post("/v1/billing/portal", headers=kit.auth(user))
    assert again.status_code == 200
    assert kit.app.subscription(user).customer_id == customer  # created once
    bad = await kit.client.post(
        "/v1/billing/checkout", json={"plan": "tester"}, headers=kit.auth(user)
    )
    assert bad.status_code == 422


async def test_forged_stale_and_replayed_webhooks(kit: Kit, user: str) -> None:
    await kit.client.get("/v1/me", headers=kit.auth(user))  # signs the user up
    now = datetime.now(UTC)
    kit.app.link_stripe_customer(user, f"cus_{user}", now)  # as Checkout does first
    paid = event(user, 1, "invoice.paid", invoice(user, f"in_{user}_1", "price_starter", now), now)
    forged = await post_event(kit, paid, secret="whsec_wrong")
    assert forged.status_code == 400 and problem_type(forged) == "bad-request"
    stale = await post_event(kit, paid, at=int(time.time()) - 3600)
    assert stale.status_code == 400
    tampered_body, headers = signed(kit, paid)
    tampered = await kit.client.post(
        "/v1/webhooks/stripe", content=tampered_body.replace(b"2500", b"9999"), headers=headers
    )
    assert tampered.status_code == 400
    assert kit.app.account(user).available_mc(now) == get_plan("trial").credits_per_month_mc
    ok = await post_event(kit, paid)
    assert ok.status_code == 200 and ok.json()["applied"] is True
    replay = await post_event(kit, paid)
    assert replay.status_code == 200 and replay.json()["applied"] is False
    granted = get_plan("trial").credits_per_month_mc + get_plan("starter").credits_per_month_mc
    assert kit.app.account(user).available_mc(now) == granted  # one grant
    unknown = await post_event(kit, event(user, 9, "customer.tax_id.created", {}, now))
    assert unknown.status_code == 200 and unknown.json()["applied"] is False
    row = await kit.services.pool.fetchrow(
        "SELECT status, amount_cents FROM payments WHERE stripe_invoice_id = $1", f"in_{user}_1"
    )
    assert row is not None and (row["status"], row["amount_cents"]) == ("paid", 2500)


async def test_entitlement_rejections_have_their_own_problem_types(kit: Kit, user: str) -> None:
    r = await kit.submit(user, model="flux-dev", prompt="x", steps=4, width=512, height=512)
    assert r.status_code == 403 and problem_type(r) == "model-not-in-plan"
    assert "upgrade" in r.json()["detail"]
    now = datetime.now(UTC)
    kit.app.link_stripe_customer(user, f"cus_{user}", now)  # as Checkout does first
    await post_event(
        kit,
        event(
            user, 1, "customer.subscription.created", subscription(user, "price_starter", now), now
        ),
    )
    await post_event(
        kit,
        event(
            user,
            2,
            "invoice.payment_failed",
            invoice(user, f"in_{user}_f", "price_starter", now),
            now,
        ),
    )
    r = await kit.submit(user)
    assert r.status_code == 402 and problem_type(r) == "payment-failed"
    assert "payment" in r.json()["detail"]


async def test_a_month_on_a_controllable_clock(kit: Kit, user: str) -> None:
    """trial -> checkout -> invoice.paid -> jobs -> upgrade -> renewal -> expiry ->
    cancellation -> end, every balance checked."""
    app = kit.app
    t0 = datetime.now(UTC) - timedelta(days=70)  # Stripe's clock for this story
    app.register_user(user, t0)
    trial, starter, pro = (get_plan(s).credits_per_month_mc for s in ("trial", "starter", "pro"))

    def available(at: datetime) -> int:
        return app.account(user).available_mc(at)

    assert available(t0) == trial
    start = t0 + timedelta(days=2)
    steps = [
        event(
            user,
            1,
            "checkout.session.completed",
            {"client_reference_id": user, "customer": f"cus_{user}"},
            start,
        ),
        event(
            user,
            2,
            "customer.subscription.created",
            subscription(user, "price_starter", start),
            start,
        ),
        event(
            user, 3, "invoice.paid", invoice(user, f"in_{user}_1", "price_starter", start), start
        ),
    ]
    for e in steps:
        assert (await post_event(kit, e)).status_code == 200
    assert available(start) == trial + starter
    # A job on the paid credit; spend order takes the trial credit (sooner expiry) first.
    job = app.submit_job(user, idempotency_key="m1", params=_tiny(), at=start)
    assert job.job_id is not None, job
    app.record_dispatch(job.job_id, attempt=1, worker_id="w", at=start)
    app.record_start(job.job_id, attempt=1, worker_id="w", gpu="T4", at=start)
    app.complete_job(job.job_id, attempt=1, gpu_ms=800, cuda_ms=790, images=[], at=start)
    assert available(start) == trial + starter - 800
    # Mid-period upgrade: the plan changes; the proration invoice's credits follow its money.
    mid = start + timedelta(days=15)
    upgrade = {
        "id": f"in_{user}_up",
        "customer": f"cus_{user}",
        "billing_reason": "subscription_update",
        "amount_paid": 2500,
        "subscription_details": {"metadata": {"user_id": user}},
        "lines": {
            "data": [
                {
                    "amount": -1250,
                    "price": {"id": "price_starter"},
                    "period": {"start": unix(mid), "end": unix(start + timedelta(days=30))},
                },
                {
                    "amount": 3750,
                    "price": {"id": "price_pro"},
                    "period": {"start": unix(mid), "end": unix(start + timedelta(days=30))},
                },
            ]
        },
    }
    await post_event(
        kit,
        event(
            user, 4, "customer.subscription.updated", subscription(user, "price_pro", start), mid
        ),
    )
    await post_event(kit, event(user, 5, "invoice.paid", upgrade, mid))
    assert app.subscription(user).plan.slug == "pro"
    assert available(mid) == trial + starter - 800 + (pro - starter) // 2
    # Renewal: a new period of pro credits; the first period's leftovers expire at its end.
    renewal = start + timedelta(days=30)
    await post_event(
        kit,
        event(
            user,
            6,
            "invoice.paid",
            invoice(user, f"in_{user}_2", "price_pro", renewal, 7500),
            renewal,
        ),
    )
    app.expire_due(user, renewal)
    assert available(renewal) == pro
    # Cancel at period end, then Stripe ends it: credit stays until its own expiry.
    await post_event(
        kit,
        event(
            user,
            7,
            "customer.subscription.updated",
            subscription(user, "price_pro", renewal, cancel=True),
            renewal,
        ),
    )
    assert app.subscription(user).cancel_at is not None
    end = renewal + timedelta(days=30)
    await post_event(
        kit,
        event(
            user,
            8,
            "customer.subscription.deleted",
            subscription(user, "price_pro", renewal, status="canceled"),
            end,
        ),
    )
    assert app.subscription(user).status == "ended" and app.subscription(user).plan.slug == "trial"
    app.expire_due(user, end)
    assert available(end) == 0
    statement = await kit.client.get(
        "/v1/me/ledger?limit=100",
        headers={**kit.auth(user), "X-Min-Position": str(await kit.project())},
    )
    assert statement.status_code == 200
    lines = statement.json()["items"]
    assert lines and lines[0]["available_after_mc"] == 0


def _tiny():
    from domain.jobs import JobParameters

    return JobParameters(model="tiny-sd", prompt="p", steps=4, width=64, height=64)


# ----------------------------------------------- issue 17, part 2: what Stripe sends, over HTTP


async def test_a_signed_but_malformed_webhook_is_recorded_rejected_and_answered_2xx(
    kit: Kit, user: str
) -> None:
    """It answered 500 and recorded nothing, so Stripe retried it for days."""
    await kit.client.get("/v1/me", headers=kit.auth(user))
    now = datetime.now(UTC)
    broken = invoice(user, f"in_{user}_b", "price_starter", now)
    broken["lines"]["data"][0]["period"] = {"start": "today"}
    r = await post_event(kit, event(user, 1, "invoice.paid", broken, now))
    assert r.status_code == 200, r.text
    assert r.json()["applied"] is False and r.json()["action"].startswith("rejected: start")
    again = await post_event(kit, event(user, 1, "invoice.paid", broken, now))
    assert again.status_code == 200 and again.json()["action"] == "duplicate: already applied"
    # Not even JSON, but signed: recorded under the body's digest, answered 2xx.
    body, headers = signed(kit, {})
    body = b"{not json"
    ts = int(time.time())
    key = kit.settings.stripe_webhook_secret.get_secret_value()
    mac = hmac.new(key.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    headers["Stripe-Signature"] = f"t={ts},v1={mac}"
    garbled = await kit.client.post("/v1/webhooks/stripe", content=body, headers=headers)
    assert garbled.status_code == 200 and garbled.json()["action"].startswith("rejected: ")
    assert kit.app.account(user).available_mc(now) == get_plan("trial").credits_per_month_mc


async def test_another_customers_invoice_is_quarantined_and_shown_to_admins(
    kit: Kit, user: str
) -> None:
    await kit.client.get("/v1/me", headers=kit.auth(user))
    now = datetime.now(UTC)
    kit.app.link_stripe_customer(user, f"cus_{user}", now)
    stolen = invoice(user, f"in_{user}_s", "price_studio", now, 15000)
    stolen["customer"] = "cus_someone_else"
    r = await post_event(kit, event(user, 1, "invoice.paid", stolen, now))
    assert r.status_code == 200 and r.json()["applied"] is False
    assert r.json()["action"].startswith("quarantined for an operator")
    assert kit.app.account(user).available_mc(now) == get_plan("trial").credits_per_month_mc
    await kit.project()
    held = await kit.client.get(
        "/v1/admin/billing/held-events?limit=100", headers=kit.auth("root", admin=True)
    )
    assert held.status_code == 200
    mine = [h for h in held.json() if h["stripe_event_id"] == f"evt_{user}_1"]
    assert len(mine) == 1 and mine[0]["outcome"] == "quarantined"
    assert mine[0]["customer_id"] == "cus_someone_else" and mine[0]["user_id"] == user
    refused = await kit.client.get("/v1/admin/billing/held-events", headers=kit.auth(user))
    assert refused.status_code == 403


async def test_an_admin_links_the_customer_and_stripes_resend_releases_the_held_event(
    kit: Kit, user: str
) -> None:
    """A quarantined event had no way out: now the admin links the customer, Stripe resends
    the event and it applies once; it leaves the held list."""
    await kit.client.get("/v1/me", headers=kit.auth(user))  # no customer linked yet
    now = datetime.now(UTC)
    paid = event(
        user, 1, "invoice.paid", invoice(user, f"in_{user}_q", "price_pro", now, 7500), now
    )
    first = await post_event(kit, paid)
    assert first.json()["action"].startswith("quarantined for an operator"), first.text
    admin = kit.auth("root", admin=True)
    url = f"/v1/admin/users/{user}/stripe-customer"
    link = {"customer_id": f"cus_{user}", "reason": "checked the invoice by hand, ticket 7"}
    assert (await kit.client.put(url, json=link, headers=kit.auth(user))).status_code == 403
    bad = await kit.client.put(url, json={**link, "customer_id": "nope"}, headers=admin)
    assert bad.status_code == 422 and "customer_id" in bad.text
    missing = await kit.client.put(
        f"/v1/admin/users/{user}-nobody/stripe-customer", json=link, headers=admin
    )
    assert missing.status_code == 404, missing.text
    linked = await kit.client.put(url, json=link, headers=admin)
    assert linked.status_code == 200 and linked.json()["changed"] is True, linked.text
    repeat = await kit.client.put(url, json=link, headers=admin)
    assert repeat.status_code == 200 and repeat.json()["changed"] is False
    other = await kit.client.put(url, json={**link, "customer_id": "cus_other"}, headers=admin)
    assert problem_type(other) == "invalid-transition" and other.status_code == 409

    resent = await post_event(kit, paid)
    assert resent.json()["applied"] is True, resent.text
    assert (await post_event(kit, paid)).json()["action"] == "duplicate: already applied"
    sub = kit.app.subscription(user)
    assert sub.plan_slug == "pro" and sub.customer_id == f"cus_{user}"
    await kit.project()
    held = await kit.client.get("/v1/admin/billing/held-events?limit=100", headers=admin)
    assert not [h for h in held.json() if h["stripe_event_id"] == f"evt_{user}_1"]


async def test_checkout_and_portal_honour_idempotency_keys(kit: Kit, user: str) -> None:
    def keyed(key: str) -> dict[str, str]:
        return {**kit.auth(user), "Idempotency-Key": key}

    first = await kit.client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=keyed("c1"))
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    again = await kit.client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=keyed("c1"))
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    other = await kit.client.post(
        "/v1/billing/checkout", json={"plan": "studio"}, headers=keyed("c1")
    )
    assert other.status_code == 409 and problem_type(other) == "idempotency-conflict"
    fresh = await kit.client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=keyed("c2"))
    assert fresh.status_code == 200 and "Idempotent-Replayed" not in fresh.headers
    # Another user's same key is theirs alone.
    theirs = await kit.client.post(
        "/v1/billing/checkout",
        json={"plan": "pro"},
        headers={**kit.auth(f"{user}-2"), "Idempotency-Key": "c1"},
    )
    assert theirs.status_code == 200 and "Idempotent-Replayed" not in theirs.headers
    portal = await kit.client.post("/v1/billing/portal", headers=keyed("p1"))
    replay = await kit.client.post("/v1/billing/portal", headers=keyed("p1"))
    assert portal.status_code == replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json() == portal.json()
    # An expired key is free again (KEY_TTL_S): its row is older than the window.
    await kit.services.pool.execute(
        "UPDATE billing_idempotency SET created_at = created_at - interval '25 hours'"
        " WHERE user_id = $1 AND key = 'p1'",
        user,
    )
    later = await kit.client.post("/v1/billing/portal", headers=keyed("p1"))
    assert later.status_code == 200 and "Idempotent-Replayed" not in later.headers
