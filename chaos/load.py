"""The bounded load generator: users sign up, some buy a plan (signed Stripe webhooks, each
delivered twice as Stripe may), jobs arrive at seeded random instants, some are cancelled,
admins grant credit (some of it expiring within the run).

It behaves like a well-behaved client of a flaky service: every command carries an
Idempotency-Key and is retried with the same key on a connection error, a 502/503/504 or a 429,
so a command the service took before a crash is never doubled and never lost. Every answer the
service gave is recorded; the checks compare them with the ledger afterwards.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import cycle
from typing import Any

import httpx

from api.auth import sign_dev_token
from api.billing.dev_events import plan_purchase, signed_delivery
from infra.settings import Settings

Action = Callable[[], Awaitable[None]]  # one client action, drawn up front and run at its time
RETRYABLE = {429, 502, 503, 504}
RETRY_FOR_S = 180.0  # a command outlives any single outage the injector causes
JOB_SIZES = (64, 96)


@dataclass(frozen=True)
class LoadConfig:
    users: int
    jobs: int
    duration_s: float  # submissions are spread over this window
    concurrency: int = 16
    cancel_ratio: float = 0.1
    pro_ratio: float = 0.25
    grant_ratio: float = 0.05  # grants per job


@dataclass
class LoadResult:
    accepted: dict[str, str] = field(default_factory=dict)  # job id -> user
    granted: dict[str, str] = field(default_factory=dict)  # grant id -> user (201 answers)
    subscribed: set[str] = field(default_factory=set)  # users whose purchase was acknowledged
    answers: Counter[str] = field(default_factory=Counter)  # "POST /v1/jobs 202" -> count
    cancels: int = 0
    grants: int = 0
    webhooks: int = 0
    retries: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # still 429 when the client gave up
    unexpected: list[str] = field(default_factory=list)  # 500s, undocumented answers, give-ups


class ServiceClient:
    """Round-robin over the API processes, with the retry policy described above."""

    def __init__(self, api_urls: list[str], result: LoadResult) -> None:
        self._clients = [httpx.AsyncClient(base_url=u, timeout=20) for u in api_urls]
        self.clients = cycle(self._clients)
        self.result = result

    async def request(
        self,
        method: str,
        path: str,
        *,
        label: str,
        ok: set[int],
        refused: Callable[[httpx.Response], bool] = lambda r: False,
        **kwargs: Any,
    ) -> httpx.Response | None:
        """``refused``: a final answer that is documented for this request (counted with the
        429s the client gave up on), not unexpected."""
        deadline = time.monotonic() + RETRY_FOR_S
        delay = 0.2
        while True:
            client = next(self.clients)
            try:
                r = await client.request(method, path, **kwargs)
                status: int | str = r.status_code
            except httpx.TransportError as exc:
                r, status = None, type(exc).__name__
            self.result.answers[f"{label} {status}"] += 1
            if r is not None and r.status_code in ok:
                return r
            if r is not None and r.status_code not in RETRYABLE and refused(r):
                self.result.refused[f"{label} {r.status_code}"] += 1
                return None
            if r is not None and r.status_code not in RETRYABLE:
                self.result.unexpected.append(f"{label}: {r.status_code} {r.text[:200]}")
                return None
            if time.monotonic() > deadline:
                if status == 429:
                    # A documented answer (the user's queue stayed full): the client gives up.
                    self.result.refused[label] += 1
                else:
                    self.result.unexpected.append(
                        f"{label}: unavailable for {RETRY_FOR_S}s ({status})"
                    )
                return None
            self.result.retries += 1
            wait = delay
            if r is not None and r.status_code == 429:
                wait = min(5.0, float(r.headers.get("retry-after", 1)))
            await asyncio.sleep(wait * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 3.0)

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()


class LoadGenerator:
    def __init__(
        self, settings: Settings, api_urls: list[str], config: LoadConfig, seed: int, run_id: str
    ) -> None:
        self.settings = settings
        self.config = config
        self.rng = random.Random(seed)
        self.run_id = run_id
        self.result = LoadResult()
        self.client = ServiceClient(api_urls, self.result)
        self.users = [f"chaos-{run_id}-u{i:03d}" for i in range(config.users)]
        self.tokens = {u: sign_dev_token(settings, u) for u in self.users}
        self.admin = sign_dev_token(settings, f"chaos-{run_id}-admin", admin=True)
        self._slots = asyncio.Semaphore(config.concurrency)

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    async def run(self) -> LoadResult:
        try:
            await self._sign_up()
            started = time.monotonic()
            tasks = [
                asyncio.create_task(self._at(started + at, action))
                for at, action in self._schedule()
            ]
            await asyncio.gather(*tasks)
        finally:
            await self.client.close()
        return self.result

    def _schedule(self) -> list[tuple[float, Action]]:
        """Every action and its offset, drawn up front so the seed fixes the whole workload."""
        c, rng = self.config, self.rng
        actions: list[tuple[float, Action]] = []
        for n in range(c.jobs):
            params = {
                "model": "tiny-sd",
                "prompt": f"chaos {n}: {rng.choice(['sea', 'sky', 'lighthouse', 'pink'])}",
                "steps": rng.randint(2, 6),
                "width": rng.choice(JOB_SIZES),
                "height": rng.choice(JOB_SIZES),
            }
            cancel_after = rng.uniform(0.0, 2.0) if rng.random() < c.cancel_ratio else None
            user = rng.choice(self.users)
            at = rng.uniform(0, c.duration_s)
            actions.append((at, self._job_action(n, user, params, cancel_after)))
        for n in range(max(1, int(c.jobs * c.grant_ratio))):
            user = rng.choice(self.users)
            credits = rng.randint(1, 50)
            expires_in = rng.uniform(5, 30) if rng.random() < 0.5 else None  # some expire mid-run
            actions.append(
                (rng.uniform(0, c.duration_s), self._grant_action(n, user, credits, expires_in))
            )
        return actions

    async def _at(self, when: float, action: Action) -> None:
        await asyncio.sleep(max(0.0, when - time.monotonic()))
        async with self._slots:
            await action()

    # -------------------------------------------------------------------------- actions

    async def _sign_up(self) -> None:
        """First requests sign every user up (a trial each); some buy the pro plan."""

        async def one(user: str) -> None:
            async with self._slots:
                await self.client.request(
                    "GET", "/v1/me", label="GET /v1/me", ok={200}, headers=self.auth(user)
                )
                if self.rng.random() < self.config.pro_ratio:
                    await self._buy_pro(user)

        await asyncio.gather(*(one(u) for u in self.users))

    async def _buy_pro(self, user: str) -> None:
        secret = self.settings.stripe_webhook_secret.get_secret_value()
        price = self.settings.stripe_price_ids["pro"]
        acknowledged = True
        for event in plan_purchase(user, price, datetime.now(UTC)):
            for _delivery in range(2):  # Stripe delivers at least once: the second is a replay
                body, headers = signed_delivery(secret, event)
                r = await self.client.request(
                    "POST",
                    "/v1/webhooks/stripe",
                    label="POST /v1/webhooks/stripe",
                    ok={200},
                    content=body,
                    headers=headers,
                )
                self.result.webhooks += 1
                acknowledged = acknowledged and r is not None
        if acknowledged:
            self.result.subscribed.add(user)

    def _job_action(
        self, n: int, user: str, params: dict[str, Any], cancel_after: float | None
    ) -> Action:
        async def submit() -> None:
            headers = {**self.auth(user), "Idempotency-Key": f"chaos-{self.run_id}-job-{n}"}
            r = await self.client.request(
                "POST",
                "/v1/jobs",
                label="POST /v1/jobs",
                ok={200, 202, 402},
                json=params,
                headers=headers,
            )
            if r is None or r.status_code == 402:
                return
            job_id = r.json()["job_id"]
            self.result.accepted[job_id] = user
            # Read your write, through the other API process: waits for the projection.
            await self.client.request(
                "GET",
                f"/v1/jobs/{job_id}",
                label="GET /v1/jobs/{id}",
                ok={200},
                headers={**self.auth(user), "X-Min-Position": str(r.json()["position"])},
            )
            if cancel_after is not None:
                await asyncio.sleep(cancel_after)
                # 409: it finished first, which is a fine answer to a late cancel.
                await self.client.request(
                    "POST",
                    f"/v1/jobs/{job_id}/cancel",
                    label="POST /v1/jobs/{id}/cancel",
                    ok={200, 202, 409},
                    headers=self.auth(user),
                )
                self.result.cancels += 1

        return submit

    def _grant_action(self, n: int, user: str, credits: int, expires_in: float | None) -> Action:
        async def grant() -> None:
            body: dict[str, Any] = {"user_id": user, "credits": credits, "reason": "chaos grant"}
            valid_until = None
            if expires_in is not None:
                valid_until = datetime.now(UTC) + timedelta(seconds=expires_in)
                body["valid_until"] = valid_until.isoformat()

            def expired_meanwhile(r: httpx.Response) -> bool:
                # Retried through outages past its own expiry (5-30 s, the retries go on for
                # 180 s): the API rightly refuses a lot that would be born expired.
                return (
                    r.status_code == 422
                    and valid_until is not None
                    and datetime.now(UTC) >= valid_until
                )

            r = await self.client.request(
                "POST",
                "/v1/admin/grants",
                label="POST /v1/admin/grants",
                ok={200, 201},
                refused=expired_meanwhile,
                json=body,
                headers={
                    "Authorization": f"Bearer {self.admin}",
                    "Idempotency-Key": f"chaos-{self.run_id}-grant-{n}",
                },
            )
            if r is not None:
                self.result.grants += 1
                self.result.granted[r.json()["grant_id"]] = user

        return grant
