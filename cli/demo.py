"""``pinksea demo``: the whole flow against running processes (``pinksea up``), over HTTP.

Two users sign up (a trial each). Bob buys the pro plan: the demo signs the two Stripe
webhooks Stripe would send (subscription created, invoice paid) with the local webhook secret.
Both submit jobs on the tiny model; Bob cancels one while it runs. When every job has
finished, it prints each user's statement from the event store, their usage, and their
images' URLs.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from api.billing.dev_events import plan_purchase, signed_delivery
from cli.app import LOCAL_PANEL, app
from cli.topology import API

console = Console()
TINY = {
    "model": "tiny-sd",
    "prompt": "a pink sea under a lighthouse",
    "steps": 8,
    "width": 128,
    "height": 128,
}
LONG = {
    **TINY,
    "prompt": "a long one, cancelled halfway",
    "steps": 150,
    "width": 256,
    "height": 256,
}


def _buy_pro(client: httpx.Client, secret: str, user: str, price: str, customer: str) -> None:
    for event in plan_purchase(user, price, datetime.now(UTC), customer=customer):
        body, headers = signed_delivery(secret, event)
        r = client.post("/v1/webhooks/stripe", content=body, headers=headers)
        r.raise_for_status()
        console.print(f"  Stripe {event['type']}: {r.json()['action']}")


def _linked_customer(database_url: str, user: str) -> str:
    """The Stripe customer Checkout created and linked for ``user``: the one Stripe's events of
    the purchase name (Stripe knows its customer; the demo, playing Stripe, reads the link)."""
    from domain.application import PinkseaApplication
    from eventstore.persistence import event_store_env

    app = PinkseaApplication(env=event_store_env(database_url, pool_size=1))
    try:
        customer = app.subscription(user).customer_id
    finally:
        app.close()
    assert customer, f"Checkout linked no Stripe customer to {user}"
    return str(customer)


def _wait(
    client: httpx.Client,
    headers: dict[str, str],
    job_id: str,
    *,
    status: set[str],
    timeout: float = 180,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job.get("status") in status:
            return job
        if time.monotonic() > deadline:
            typer.echo(f"job {job_id} is still {job.get('status')} after {timeout}s", err=True)
            raise typer.Exit(1)
        time.sleep(0.3)


@app.command(rich_help_panel=LOCAL_PANEL)
def demo(
    api: str = typer.Option(f"http://127.0.0.1:{API.metrics_port}", help="The running API."),
) -> None:
    """Sign up two users, sell one a plan, run and cancel jobs, print statements and usage."""
    from api.auth import sign_dev_token
    from domain import ids
    from infra.settings import get_settings

    settings = get_settings()
    client = httpx.Client(base_url=api, timeout=30)
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            typer.echo("the API did not become ready; is `pinksea up` running?", err=True)
            raise typer.Exit(1)
        time.sleep(0.5)
    run = datetime.now(UTC).strftime("%H%M%S")
    users = {name: f"{name}-{run}" for name in ("alice", "bob")}
    auth = {
        name: {"Authorization": f"Bearer {sign_dev_token(settings, user)}"}
        for name, user in users.items()
    }
    console.rule("1. Sign-up: a trial each")
    for name, headers in auth.items():
        me = client.get("/v1/me", headers=headers).json()
        console.print(f"  {name}: plan {me['plan']['slug']}, user id {me['user_id']}")
    console.rule("2. Bob buys the pro plan (signed Stripe webhooks)")
    checkout = client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=auth["bob"])
    console.print(f"  Checkout Session: {checkout.json().get('url')}")
    _buy_pro(
        client,
        settings.stripe_webhook_secret.get_secret_value(),
        users["bob"],
        settings.stripe_price_ids["pro"],
        _linked_customer(settings.database_url, users["bob"]),
    )
    console.rule("3. Jobs")
    submitted: dict[str, list[str]] = {"alice": [], "bob": []}
    for name, params in (("alice", TINY), ("alice", TINY), ("bob", TINY), ("bob", LONG)):
        r = client.post(
            "/v1/jobs",
            json=params,
            headers={
                **auth[name],
                "Idempotency-Key": f"{run}-{len(submitted[name])}-{params['steps']}",
            },
        )
        body = r.json()
        console.print(
            f"  {name}: {r.status_code} {body.get('status')} job {body.get('job_id')} "
            f"hold {body.get('hold_credits')} credits"
        )
        submitted[name].append(body["job_id"])
    long_job = submitted["bob"][-1]
    _wait(client, auth["bob"], long_job, status={"running", "completed", "failed"})
    time.sleep(1.5)
    r = client.post(f"/v1/jobs/{long_job}/cancel", headers=auth["bob"])
    console.print(f"  bob cancels {long_job} while it runs: {r.status_code}")
    for name, jobs in submitted.items():
        for job_id in jobs:
            job = _wait(client, auth[name], job_id, status={"completed", "failed", "cancelled"})
            console.print(
                f"  {name}: {job_id} {job['status']}, GPU {job.get('gpu_ms')} ms, "
                f"charged {job.get('charged_credits')} credits"
            )
    console.rule("4. Statements (from the event store), usage and images")
    from cli.ledger import statement as print_statement

    for name, user in users.items():
        console.print(f"[bold]{name}[/bold]")
        print_statement(user, None, None, None, None)
        usage = client.get("/v1/me/usage", params={"group_by": "model"}, headers=auth[name])
        console.print(_usage_table(usage.json()))
        images = client.get("/v1/images", headers=auth[name]).json().get("items", [])
        for image in images:
            full = client.get(f"/v1/images/{image['name']}", headers=auth[name]).json()
            # The URL whole on its own line: a terminal's wrap must not break a copy-paste.
            console.print(f"  image {image['name']}:")
            console.print(full.get("url") or "", soft_wrap=True, overflow="ignore", crop=False)
    table = Table(title="demo summary")
    for col in ("user", "account id", "jobs"):
        table.add_column(col)
    for name, user in users.items():
        table.add_row(user, str(ids.account_id(user)), str(len(submitted[name])))
    console.print(table)


def _usage_table(usage: dict[str, Any]) -> Table:
    """``GET /v1/me/usage`` as a table that fits 80 columns (one row per model, then total)."""
    table = Table(title=f"usage {usage['from'][:10]} .. {usage['to'][:10]}", title_justify="left")
    for col in ("model", "jobs", "GPU-ms", "charged", "refunded"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for bucket in usage["buckets"]:
        table.add_row(
            bucket["key"],
            str(bucket["jobs"]),
            str(bucket["gpu_ms"]),
            bucket["charged_credits"],
            bucket["refunded_credits"],
        )
    table.add_row(
        "total",
        str(usage["jobs"]),
        str(usage["gpu_ms"]),
        usage["charged_credits"],
        usage["refunded_credits"],
        style="bold",
    )
    return table
