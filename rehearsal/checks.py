"""What the rehearsal proves, one check at a time, over HTTP as a client would (plus the
stack's own services where only they can tell: the broker, the bucket, CloudWatch).

Each check is recorded with its outcome, a detail line and its duration; a failed check does
not stop the ones after it that do not depend on it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import tempfile
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from api.billing.dev_events import plan_purchase, signed_delivery
from infra.observability.check import check_emitted
from infra.settings import PAID_PLANS, Settings
from rehearsal.oidc import OidcProvider, Tokens, resign_with_stranger_key
from rehearsal.stack import StripeRecorder

JOB = {"model": "tiny-sd", "prompt": "a pink sea at dawn", "steps": 4, "width": 64, "height": 64}
JOB_TIMEOUT_S = 240.0  # the worker's first job builds and loads the tiny model on a busy CPU
READ_TIMEOUT_S = 30.0  # a projection catching up after a command
POLL_S = 0.3
PNG = b"\x89PNG\r\n\x1a\n"


class CheckFailed(AssertionError):
    pass


def require(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class Outcome:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class Checks:
    outcomes: list[Outcome] = field(default_factory=list)

    @asynccontextmanager
    async def check(self, name: str) -> AsyncIterator[list[str]]:
        """Run the block as one check; lines it appends to the yielded list are the detail."""
        notes: list[str] = []
        started = time.monotonic()
        try:
            yield notes
        except Exception as exc:
            message = str(exc) if isinstance(exc, CheckFailed) else _short_trace(exc)
            self.outcomes.append(
                Outcome(name, False, "; ".join([*notes, message]), time.monotonic() - started)
            )
        else:
            self.outcomes.append(Outcome(name, True, "; ".join(notes), time.monotonic() - started))

    def record(self, name: str, ok: bool, detail: str, seconds: float = 0.0) -> None:
        self.outcomes.append(Outcome(name, ok, detail, seconds))

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


def _short_trace(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)[-1:]
    where = f" at {frames[0].filename.rsplit('/', 1)[-1]}:{frames[0].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Users:
    """The rehearsal's people, each signed in through the provider."""

    buyer: Tokens
    buyer_id: str
    admin: Tokens
    admin_id: str


@dataclass
class Context:
    api: httpx.AsyncClient  # the API process, over HTTP
    http: httpx.AsyncClient  # everything else (the provider)
    provider: OidcProvider
    client_id: str
    settings: Settings  # what the API process reads (after the swap)
    recorder: StripeRecorder
    cloudfront_public_key: rsa.RSAPublicKey
    s3: Any
    cloudwatch: Any
    run_id: str


# ------------------------------------------------------------------------------ sign-in


async def sign_in(checks: Checks, ctx: Context) -> Users | None:
    users: Users | None = None
    async with checks.check("sign-in: hosted sign-in (authorization code + PKCE), ID token") as n:
        buyer_id = f"buyer-{ctx.run_id}"
        buyer = await ctx.provider.sign_in(ctx.http, buyer_id, ctx.client_id)
        claims = Tokens.claims(buyer.id_token)
        require(claims.get("token_use") == "id" and claims.get("aud") == ctx.client_id, str(claims))
        me = await ctx.api.get("/v1/me", headers=bearer(buyer.id_token))
        require(me.status_code == 200, f"GET /v1/me {me.status_code} {me.text[:200]}")
        body = me.json()
        require(body["user_id"] == buyer_id, f"signed in as {body['user_id']}")
        require(not body["is_admin"], "a user without the admin group is an admin")
        n.append(f"{buyer_id}: plan {body['plan']['slug']}, email {body['email']}")
        admin_id = f"admin-{ctx.run_id}"
        admin = await ctx.provider.sign_in(ctx.http, admin_id, ctx.client_id)
        users = Users(buyer, buyer_id, admin, admin_id)
    if users is None:
        return None

    async with checks.check("sign-in: access token (client_id, no aud)") as n:
        token = await ctx.provider.password_sign_in(ctx.http, users.buyer_id, ctx.client_id)
        claims = Tokens.claims(token.access_token)
        require("aud" not in claims and claims.get("client_id") == ctx.client_id, str(claims))
        me = await ctx.api.get("/v1/me", headers=bearer(token.access_token))
        require(me.status_code == 200, f"GET /v1/me {me.status_code} {me.text[:200]}")
        require(me.json()["user_id"] == users.buyer_id, "another user")
        # As Cognito's: no email claim, so only an ID-token sign-in records the address the
        # notifier writes to.
        n.append(f"token_use=access accepted for the app client; email {me.json()['email']}")

    async with checks.check("sign-in: admin by cognito:groups") as n:
        groups = Tokens.claims(users.admin.id_token).get("cognito:groups")
        r = await ctx.api.get("/v1/admin/users", headers=bearer(users.admin.id_token))
        require(r.status_code == 200, f"admin: GET /v1/admin/users {r.status_code}")
        r = await ctx.api.get("/v1/admin/users", headers=bearer(users.buyer.id_token))
        require(r.status_code == 403, f"non-admin: GET /v1/admin/users {r.status_code}")
        n.append(f"{users.admin_id} (cognito:groups {groups}): 200; {users.buyer_id}: 403")

    async with checks.check("sign-in: wrong issuer, audience or key refused; dev tokens off") as n:
        from api.auth import sign_dev_token

        user, other_app = users.buyer_id, "another-app-client"
        with tempfile.TemporaryDirectory() as keys:
            dev = Settings(_env_file=None, dev_jwt_key_path=f"{keys}/dev.pem")
            cases = {
                "wrong issuer": (
                    await ctx.provider.other().sign_in(ctx.http, user, ctx.client_id)
                ).id_token,
                "wrong audience (ID token)": (
                    await ctx.provider.sign_in(ctx.http, user, other_app)
                ).id_token,
                "wrong audience (access token)": (
                    await ctx.provider.password_sign_in(ctx.http, user, other_app)
                ).access_token,
                "wrong key": resign_with_stranger_key(users.buyer.id_token),
                "dev token": sign_dev_token(dev, user),
            }
        for case, bad in cases.items():
            r = await ctx.api.get("/v1/me", headers=bearer(bad))
            require(r.status_code == 401, f"{case}: {r.status_code}")
        jwks = await ctx.api.get("/.well-known/jwks.json")
        require(jwks.status_code == 404, f"the dev issuer's JWKS is served ({jwks.status_code})")
        n.append(f"401 for {', '.join(cases)}; no dev JWKS")
    return users


# ------------------------------------------------------------------------------- Stripe


async def stripe(checks: Checks, ctx: Context, users: Users, webhook_secret: str) -> None:
    auth = bearer(users.buyer.id_token)
    customers: set[str] = set()  # the buyer's, as Checkout linked it
    async with checks.check("Stripe Checkout for each paid plan, with its configured price") as n:
        for plan in PAID_PLANS:
            before = len(ctx.recorder.requests)
            r = await ctx.api.post("/v1/billing/checkout", json={"plan": plan}, headers=auth)
            require(
                r.status_code == 200,
                f"{plan}: POST /v1/billing/checkout {r.status_code} {r.text[:200]}",
            )
            sessions = [
                q for q in ctx.recorder.requests[before:] if q.path == "/v1/checkout/sessions"
            ]
            require(len(sessions) == 1, f"{plan}: {len(sessions)} Checkout Sessions created")
            form = sessions[0].form
            customers.update(form.get("customer", []))
            price = form.get("line_items[0][price]", ["?"])[0]
            want = ctx.settings.stripe_price_ids[plan]
            require(price == want, f"{plan}: Checkout asked for {price}, configured {want}")
            require(
                form.get("success_url") == [ctx.settings.checkout_success_url],
                f"{plan}: success_url {form.get('success_url')}",
            )
            key = ctx.settings.stripe_api_key.get_secret_value()
            require(sessions[0].authorization == f"Bearer {key}", f"{plan}: not the configured key")
            n.append(f"{plan}={price}")

    async with checks.check("Stripe webhooks: signed purchase applied once, forgery refused") as n:
        price = ctx.settings.stripe_price_ids["starter"]
        # Stripe's events of this purchase name the customer Checkout linked to the buyer
        # (any other customer's would be quarantined, api/billing/stripe_events.py).
        require(len(customers) == 1, f"Checkout used customers {sorted(customers)}")
        purchase = plan_purchase(users.buyer_id, price, datetime.now(UTC), customer=min(customers))
        for event in purchase:
            body, headers = signed_delivery(webhook_secret, event)
            r = await ctx.api.post("/v1/webhooks/stripe", content=body, headers=headers)
            require(
                r.status_code == 200 and r.json()["applied"], f"{event['type']}: {r.text[:200]}"
            )
            again = await ctx.api.post("/v1/webhooks/stripe", content=body, headers=headers)
            require(
                again.status_code == 200 and not again.json()["applied"],
                f"{event['type']} delivered again: {again.text[:200]}",
            )
            n.append(f"{event['type']}: {r.json()['action']}")
        body, headers = signed_delivery("whsec_not_the_configured_secret", event)
        r = await ctx.api.post("/v1/webhooks/stripe", content=body, headers=headers)
        require(r.status_code == 400, f"a forged delivery: {r.status_code}")

        async def on_starter() -> bool:
            me = await ctx.api.get("/v1/me", headers=auth)
            return me.status_code == 200 and me.json()["plan"]["slug"] == "starter"

        await _until("the buyer's plan is starter", on_starter, READ_TIMEOUT_S)
        n.append("plan starter")


# ------------------------------------------------------------------------ the job flow


async def job_flow(checks: Checks, ctx: Context, users: Users) -> None:
    auth = bearer(users.buyer.id_token)
    image: dict[str, Any] | None = None
    async with checks.check("job: submitted, run by the GPU worker, completed and billed") as n:
        r = await ctx.api.post(
            "/v1/jobs", json=JOB, headers={**auth, "Idempotency-Key": f"rehearsal-{ctx.run_id}"}
        )
        require(r.status_code == 202, f"POST /v1/jobs {r.status_code} {r.text[:300]}")
        job_id = r.json()["job_id"]
        started = time.monotonic()
        job: dict[str, Any] = {}

        async def finished() -> bool:
            nonlocal job
            job = (await ctx.api.get(f"/v1/jobs/{job_id}", headers=auth)).json()
            return job.get("status") in ("completed", "failed", "cancelled")

        await _until(f"job {job_id} finished", finished, JOB_TIMEOUT_S)
        require(job["status"] == "completed", f"job {job_id} {job['status']}: {job.get('error')}")
        require(job["tier"] == "basic", f"ran on {job['tier']}")
        require(0 < job["charged_mc"] <= job["hold_mc"], f"charged {job['charged_mc']} mc")
        n.append(
            f"{job_id} completed in {time.monotonic() - started:.0f}s, GPU {job['gpu_ms']} ms, "
            f"charged {job['charged_mc']} mc"
        )

        async def listed() -> bool:
            nonlocal image
            items = (await ctx.api.get("/v1/images", headers=auth)).json().get("items", [])
            image = next((i for i in items if i["job_id"] == job_id), None)
            return image is not None

        await _until("the job's image is listed", listed, READ_TIMEOUT_S)

        async def settled_line() -> bool:
            page = (await ctx.api.get("/v1/me/ledger", headers=auth)).json().get("items", [])
            line = next((x for x in page if x["job_id"] == job_id and x["kind"] == "settle"), None)
            if line is None:
                return False
            n.append(f"statement: {line['description']} ({line['amount_mc']} mc)")
            return True

        await _until("the statement has the job's settlement", settled_line, READ_TIMEOUT_S)

    async with checks.check("image URL signed for CloudFront, verified with the public key") as n:
        require(image is not None, "no image")
        assert image is not None
        url = image["url"]
        key = verify_cloudfront_url(
            url,
            ctx.cloudfront_public_key,
            key_pair_id=ctx.settings.cloudfront_key_pair_id or "",
            domain=ctx.settings.cdn_domain or "",
        )
        n.append(f"https://{ctx.settings.cdn_domain}/{key} (canned policy, RSA-SHA1)")
        body = await asyncio.to_thread(
            lambda: ctx.s3.get_object(Bucket=ctx.settings.s3_bucket, Key=key)["Body"].read()
        )
        require(body.startswith(PNG), f"s3://{ctx.settings.s3_bucket}/{key} is not a PNG")
        n.append(f"the object behind it is a {len(body)}-byte PNG")


def verify_cloudfront_url(
    url: str, public_key: rsa.RSAPublicKey, *, key_pair_id: str, domain: str
) -> str:
    """The S3 key a CloudFront signed URL grants, once its signature verifies (what CloudFront
    does at the edge: the policy, canned or custom, signed RSA-SHA1 with the key pair)."""
    parts = urlsplit(url)
    require(
        parts.scheme == "https" and parts.netloc == domain,
        f"not a CloudFront URL of {domain}: {url[:120]}",
    )
    query = parse_qs(parts.query)
    require(query.get("Key-Pair-Id") == [key_pair_id], f"Key-Pair-Id {query.get('Key-Pair-Id')}")
    signature = _cf_b64decode(query["Signature"][0])
    if "Policy" in query:
        policy = _cf_b64decode(query["Policy"][0])
        statement = json.loads(policy)["Statement"][0]
        expires = int(statement["Condition"]["DateLessThan"]["AWS:EpochTime"])
        resource = statement["Resource"]
        require(resource == url.split("?")[0] or resource.endswith("*"), f"policy for {resource}")
    else:
        expires = int(query["Expires"][0])
        cut = min(i for i in (url.find("?Expires="), url.find("&Expires=")) if i >= 0)
        resource = url[:cut]
        policy = json.dumps(
            {
                "Statement": [
                    {
                        "Resource": resource,
                        "Condition": {"DateLessThan": {"AWS:EpochTime": expires}},
                    }
                ]
            },
            separators=(",", ":"),
        ).encode()
    try:
        public_key.verify(
            signature, policy, padding.PKCS1v15(), hashes.SHA1()
        )  # CloudFront's algorithm
    except Exception:
        raise CheckFailed("the signature does not verify with the CloudFront public key") from None
    now = time.time()
    require(now < expires <= now + timedelta(days=7).total_seconds(), f"expires at {expires}")
    return parts.path.lstrip("/")


def _cf_b64decode(text: str) -> bytes:
    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"))


# ------------------------------------------------------------------- Kafka and metrics


async def kafka_over_sasl_ssl(checks: Checks, ctx: Context) -> None:
    async with checks.check("Kafka over TLS + SCRAM-SHA-512: every consumer group on it") as n:
        from aiokafka.admin import AIOKafkaAdminClient

        from infra.kafka import connection_kwargs

        s = ctx.settings
        require(
            s.kafka_security_protocol == "SASL_SSL" and s.kafka_sasl_mechanism == "SCRAM-SHA-512",
            f"the processes connect with {s.kafka_security_protocol}/{s.kafka_sasl_mechanism}",
        )
        admin = AIOKafkaAdminClient(**connection_kwargs(s))
        await admin.start()
        try:
            groups = sorted(g[0] for g in await admin.list_consumer_groups())
        finally:
            await admin.close()
        # The consumers of the pipeline: the projections, the settler, the GPU worker.
        for prefix in ("pinksea.projection.", "pinksea.settler", "pinksea.gpu.worker."):
            require(any(g.startswith(prefix) for g in groups), f"no {prefix}* group in {groups}")
        n.append(f"{s.kafka_bootstrap_servers}, CA {s.kafka_ssl_cafile}: {', '.join(groups)}")


async def lag_metric_published(checks: Checks, ctx: Context, environment: str) -> None:
    async with checks.check("lag-metric sidecar: GpuBacklog published to CloudWatch") as n:

        async def published() -> bool:
            metrics = await asyncio.to_thread(
                ctx.cloudwatch.list_metrics, Namespace="Pinksea/Kafka", MetricName="GpuBacklog"
            )
            dims = [{d["Name"]: d["Value"] for d in m["Dimensions"]} for m in metrics["Metrics"]]
            found = [d for d in dims if d.get("Environment") == environment]
            if found:
                n.append(f"GpuBacklog for {sorted(d.get('Tier', '?') for d in found)}")
            return bool(found)

        await _until("GpuBacklog in CloudWatch", published, 90, 2)


async def low_balance_email(
    checks: Checks, ctx: Context, users: Users, ses_endpoint: str, sender: str
) -> None:
    """The notifier's production transport: a user signed in with an e-mail claim, debited
    below a tenth of the trial's credits, gets one e-mail through SES from the sender."""
    async with checks.check("low-balance e-mail through SES (the notifier)") as n:
        user = f"saver-{ctx.run_id}"
        tokens = await ctx.provider.sign_in(ctx.http, user, ctx.client_id)
        me = await ctx.api.get("/v1/me", headers=bearer(tokens.id_token))
        require(me.status_code == 200, f"GET /v1/me {me.status_code}")
        address = me.json()["email"]
        available = await _available_mc(ctx, tokens.id_token)
        plan_mc = me.json()["plan"]["credits_per_month_mc"]
        debit_mc = available - plan_mc // 10 + 1000  # a credit under the line
        r = await ctx.api.post(
            "/v1/admin/adjustments",
            json={
                "user_id": user,
                "credits": f"-{debit_mc / 1000:.3f}",
                "reason": "production rehearsal: cross the low-balance line",
            },
            headers={**bearer(users.admin.id_token), "Idempotency-Key": f"low-{ctx.run_id}"},
        )
        require(r.status_code == 201, f"POST /v1/admin/adjustments {r.status_code} {r.text[:200]}")
        found: list[dict[str, Any]] = []

        async def mailed() -> bool:
            nonlocal found
            found = await asyncio.to_thread(_ses_messages, ses_endpoint, address)
            return bool(found)

        await _until(f"an SES message to {address}", mailed, READ_TIMEOUT_S * 2, 1)
        require(len(found) == 1, f"{len(found)} messages to {address}")
        raw = found[0].get("raw_data", "")
        require(sender.split("<")[-1].rstrip(">") in raw, f"not from {sender}")
        n.append(f"debited {debit_mc} mc; one message to {address} from {sender}")


async def _available_mc(ctx: Context, token: str) -> int:
    """The available balance once the sign-up's trial credit is in it."""
    available = 0

    async def granted() -> bool:
        nonlocal available
        r = await ctx.api.get("/v1/me/balance", headers=bearer(token))
        available = int(r.json().get("available_mc", 0)) if r.status_code == 200 else 0
        return available > 0

    await _until("the sign-up's trial credit", granted, READ_TIMEOUT_S)
    return available


def _ses_messages(endpoint: str, address: str) -> list[dict[str, Any]]:
    """What SES accepted, from the rehearsal's own moto server (/moto-api/data.json)."""
    r = httpx.get(f"{endpoint}/moto-api/data.json", timeout=10)
    r.raise_for_status()
    raw = r.json().get("ses", {}).get("RawMessage", [])
    return [m for m in raw if address in m.get("destinations", [])]


async def processes_stayed_up(checks: Checks, crashes: Mapping[str, int]) -> None:
    async with checks.check("no process exited during the rehearsal") as n:
        require(not crashes, f"exits (restarted as ECS would): {dict(crashes)}")
        n.append("none")


async def _until(what: str, probe: Any, timeout_s: float, every_s: float = POLL_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.TransportError):
            if await probe():
                return
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what}: not within {timeout_s:.0f}s")
        await asyncio.sleep(every_s)


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]


async def metrics_emitted(checks: Checks, metrics_urls: dict[str, str]) -> None:
    """Every metric the Grafana dashboard, the Prometheus rules and the CloudWatch alarms name
    is emitted by a process of the production topology (scraped after the job flow)."""
    async with checks.check("every metric the dashboards and alerts name is emitted") as n:
        result = await asyncio.to_thread(check_emitted, metrics_urls)
        require(result.ok, result.summary())
        n.append(f"{len(metrics_urls)} processes scraped: {', '.join(sorted(metrics_urls))}")
