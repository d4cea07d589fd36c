"""Stripe webhook deliveries as Stripe would send them, signed with the local webhook secret:
a plan purchase (Checkout completed, subscription created, first invoice paid). For the demo
and the chaos run, which have no Stripe account to send real ones.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta
from typing import Any


def signed_delivery(secret: str, event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one delivery (``Stripe-Signature: t=..,v1=HMAC(t.body)``)."""
    body = json.dumps(event).encode()
    ts = int(time.time())
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"Stripe-Signature": f"t={ts},v1={mac}", "Content-Type": "application/json"}


def plan_purchase(
    user: str,
    price: str,
    now: datetime,
    amount_cents: int = 7500,
    customer: str | None = None,
) -> list[dict[str, Any]]:
    """The events of a first purchase: ``checkout.session.completed`` (which links the user's
    customer, as the Checkout route would before: every later object's customer must be it),
    ``customer.subscription.created``, ``invoice.paid``. ``customer``: the user's Stripe
    customer when the Checkout route already linked one (its events must name that one)."""
    start, end = int(now.timestamp()), int((now + timedelta(days=30)).timestamp())
    meta = {"user_id": user}
    subscription, customer = f"sub_dev_{user}", customer or f"cus_dev_{user}"
    objects = [
        (
            "checkout.session.completed",
            {
                "id": f"cs_dev_{user}_{start}",
                "object": "checkout.session",
                "client_reference_id": user,
                "customer": customer,
                "subscription": subscription,
                "metadata": meta,
            },
        ),
        (
            "customer.subscription.created",
            {
                "id": subscription,
                "customer": customer,
                "status": "active",
                "metadata": meta,
                "items": {
                    "data": [
                        {
                            "price": {"id": price},
                            "current_period_start": start,
                            "current_period_end": end,
                        }
                    ]
                },
            },
        ),
        (
            "invoice.paid",
            {
                "id": f"in_dev_{user}_{start}",
                "customer": customer,
                "amount_paid": amount_cents,
                "currency": "usd",
                "billing_reason": "subscription_create",
                "parent": {
                    "subscription_details": {"subscription": subscription, "metadata": meta}
                },
                "lines": {
                    "data": [
                        {
                            "amount": amount_cents,
                            "price": {"id": price},
                            "period": {"start": start, "end": end},
                        }
                    ]
                },
            },
        ),
    ]
    return [
        {
            "id": f"evt_dev_{user}_{start}_{n}",
            "type": kind,
            "created": start,
            "data": {"object": obj},
        }
        for n, (kind, obj) in enumerate(objects)
    ]
