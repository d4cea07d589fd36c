"""Hostile input, swept from the OpenAPI document so that new routes are covered without
touching this file: guessed API keys, injection strings in every path and query parameter,
another tenant's ids in every user-scoped path, bodies that lie about their size.

What is expected everywhere: a 4xx application/problem+json or a correct (empty or own-data)
answer; never a 5xx, never another tenant's data, never a change to another tenant's state.
(Single cases of the same attacks live beside their routes: test_auth.py, test_api_keys.py,
test_images.py, test_jobs.py, test_ops.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.ratelimit import limit_for
from infra.settings import Settings
from tests.api.conftest import Kit, problem_type

pytestmark = pytest.mark.integration

DOC = create_app(Settings(dev_jwt_enabled=False)).openapi()
# Routes with a path parameter that name no tenant's resource: the same for every user.
SYSTEM_DATA = {"/v1/presets/{preset_id}"}
METHODS = ("get", "post", "put", "patch", "delete")


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in DOC["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def is_problem(r: httpx.Response) -> bool:
    return bool(r.headers.get("content-type", "").startswith("application/problem+json"))


@dataclass
class Victim:
    """Tenant A, with one of everything a user owns."""

    user: str
    job_id: str
    image: str
    image_keys: tuple[str, str]
    key_id: str
    key: str
    key_prefix: str
    ledger: list[dict[str, Any]]
    upload_id: str
    endpoint_id: str
    board_id: str
    model_id: str

    def markers(self) -> list[str]:
        """Strings that must never appear in an answer to someone else."""
        return [
            self.user,
            self.job_id,
            self.image,
            self.key_id,
            self.key_prefix,
            self.upload_id,
            self.endpoint_id,
            self.board_id,
            self.model_id,
        ]


async def make_victim(kit: Kit) -> Victim:
    user = f"victim-{uuid.uuid4().hex[:10]}"
    await kit.client.get("/v1/me", headers=kit.auth(user))
    # A LoRA uploaded on a contract with lora_training (still pending: A's all the same).
    terms = {"credits_per_month": 100, "tier": "basic", "concurrent_jobs": 1, "storage_gb": 1}
    await kit.set_plan(user, "enterprise", custom_terms=terms)
    r = await kit.client.post(
        "/v1/models/mine", json={"name": "pink", "family": "sd1.5"}, headers=kit.auth(user)
    )
    assert r.status_code == 201, r.text
    model_id = r.json()["model_id"]
    await kit.set_plan(user, "pro")
    done = (await kit.submit(user)).json()["job_id"]
    name = f"{done}-0"
    keys = (f"users/{user}/images/{name}.png", f"users/{user}/images/{name}.webp")
    for key in keys:
        kit.services.s3.put_object(Bucket=kit.settings.s3_bucket, Key=key, Body=b"img")
    image = {
        "name": name,
        "key": keys[0],
        "thumbnail_key": keys[1],
        "size_bytes": 3,
        "width": 64,
        "height": 64,
    }
    kit.run_job(done, images=[image])  # type: ignore[list-item]
    queued = (await kit.submit(user)).json()["job_id"]  # still cancellable
    r = await kit.client.post("/v1/api-keys", json={"name": "ci"}, headers=kit.auth(user))
    assert r.status_code == 201, r.text
    created = r.json()
    r = await kit.client.post(
        "/v1/uploads", json={"content_type": "image/png"}, headers=kit.auth(user)
    )
    assert r.status_code == 201, r.text
    upload_id = r.json()["upload_id"]
    r = await kit.client.post(
        "/v1/webhook-endpoints",
        json={"url": "https://93.184.216.34/hook", "enabled_events": ["*"]},
        headers=kit.auth(user),
    )
    assert r.status_code == 201, r.text
    endpoint_id = r.json()["id"]
    r = await kit.client.post("/v1/boards", json={"name": "seas"}, headers=kit.auth(user))
    assert r.status_code == 201, r.text
    board_id = r.json()["board_id"]
    r = await kit.client.put(f"/v1/boards/{board_id}/images/{name}", headers=kit.auth(user))
    assert r.status_code == 204, r.text
    await kit.project()
    ledger = (await kit.client.get("/v1/me/ledger", headers=kit.auth(user))).json()["items"]
    assert ledger
    return Victim(
        user=user,
        job_id=queued,
        image=name,
        image_keys=keys,
        key_id=created["id"],
        key=created["key"],
        key_prefix=created["prefix"],
        ledger=ledger,
        upload_id=upload_id,
        endpoint_id=endpoint_id,
        board_id=board_id,
        model_id=model_id,
    )


async def assert_untouched(kit: Kit, v: Victim) -> None:
    """A's job is still queued, image and objects still there, key still valid, ledger same."""
    await kit.project()
    job = kit.app.job(uuid.UUID(v.job_id))
    assert job.status == "accepted" and not job.cancel_requested
    r = await kit.client.get(f"/v1/images/{v.image}", headers=kit.auth(v.user))
    assert r.status_code == 200, r.text
    for key in v.image_keys:
        kit.services.s3.head_object(Bucket=kit.settings.s3_bucket, Key=key)
    r = await kit.client.get("/v1/me", headers={"X-API-Key": v.key})
    assert r.status_code == 200 and r.json()["user_id"] == v.user
    ledger = (await kit.client.get("/v1/me/ledger", headers=kit.auth(v.user))).json()["items"]
    assert ledger == v.ledger
    r = await kit.client.get(f"/v1/boards/{v.board_id}", headers=kit.auth(v.user))
    assert r.status_code == 200 and r.json()["image_count"] == 1, r.text
    r = await kit.client.get(f"/v1/models/mine/{v.model_id}", headers=kit.auth(v.user))
    assert r.status_code == 200 and r.json()["status"] == "pending", r.text


@contextlib.asynccontextmanager
async def client_from(api_app: FastAPI, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """The in-process app as seen from another client address (rate limits are per address)."""
    transport = httpx.ASGITransport(app=api_app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield c


def fresh_address() -> str:
    n = uuid.uuid4().int
    return f"198.18.{n % 250}.{(n >> 8) % 250 + 1}"  # benchmarking range: never a real client


# ------------------------------------------------------------------- API-key guessing


async def test_guessed_api_keys_are_401_then_429_per_address(kit: Kit, api_app: FastAPI) -> None:
    """Failed API-key attempts are limited per client address: after the bound every failed
    attempt from that address is a 429, while other addresses are unaffected; a valid key
    still works from there (a NAT's other customers are not locked out; the secrets are 32
    random bytes, nothing to guess). Per key prefix too: tests/api/test_proxy_limits.py."""
    v = await make_victim(kit)
    bound = limit_for("auth", "trial", kit.settings.rate_limit_multiplier)
    assert bound <= 100  # a guessing bound: load-test multipliers do not raise it
    secret = v.key.split("_", 2)[2]
    guesses = [
        f"{v.key_prefix}_{'A' * 43}",  # the right prefix, a wrong secret
        f"{v.key_prefix}_{secret[:-1]}{'B' if secret[-1] != 'B' else 'C'}",  # one char off
        f"psk_{'Z' * 10}_{secret}",  # a wrong prefix, the right secret
        "psk_",
        "psk_' OR 1=1 --",
        "psk_" + "x" * 5000,
        "psk_%00%25_",
    ]
    attacker = fresh_address()
    async with client_from(api_app, attacker) as c:
        for i in range(bound):
            guess = guesses[i % len(guesses)]
            # Both ways of sending a key count.
            headers = {"X-API-Key": guess} if i % 2 else {"Authorization": f"Bearer {guess}"}
            r = await c.get("/v1/me", headers=headers)
            assert r.status_code == 401, (i, r.text)
            assert problem_type(r) == "unauthorized"
        r = await c.get("/v1/me", headers={"X-API-Key": guesses[0]})
        assert r.status_code == 429 and problem_type(r) == "rate-limited"
        assert int(r.headers["retry-after"]) >= 1
        r = await c.get("/v1/me", headers={"X-API-Key": v.key})
        assert r.status_code == 200, "a valid key is never locked out by others' failures"
        r = await c.get("/v1/me", headers={"X-API-Key": guesses[1]})
        assert r.status_code == 429
    async with client_from(api_app, fresh_address()) as c:
        r = await c.get("/v1/me", headers={"X-API-Key": v.key})
        assert r.status_code == 200 and r.json()["user_id"] == v.user
        r = await c.get("/v1/me", headers={"X-API-Key": guesses[3]})
        assert r.status_code == 401
        # The victim's prefix saw 10 wrong secrets: more are 429s from anywhere.
        r = await c.get("/v1/me", headers={"X-API-Key": guesses[0]})
        assert r.status_code == 429
        # Signed-in sessions are not API-key attempts: the blocked address still works with one.
    async with client_from(api_app, attacker) as c:
        assert (await c.get("/v1/me", headers=kit.auth(v.user))).status_code == 200


async def test_api_key_check_is_a_constant_time_hash_comparison(
    kit: Kit, api_app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row is found by the visible prefix; the secret is only ever compared as SHA-256
    digests with hmac.compare_digest (no early exit on the first differing character)."""
    v = await make_victim(kit)
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    forged = f"{v.key_prefix}_{'A' * 43}"
    stored = await kit.services.pool.fetchval(
        "SELECT hash FROM api_keys WHERE key_id = $1", uuid.UUID(v.key_id)
    )
    async with client_from(api_app, fresh_address()) as c:
        assert (await c.get("/v1/me", headers={"X-API-Key": forged})).status_code == 401
        assert (await c.get("/v1/me", headers={"X-API-Key": v.key})).status_code == 200
    assert calls == [
        (hashlib.sha256(forged.encode()).hexdigest(), stored),
        (hashlib.sha256(v.key.encode()).hexdigest(), stored),
    ]


# ------------------------------------------------------------------ injection strings

PAYLOADS: list[str] = [
    "' OR 1=1 --",
    '" OR ""="',
    "1; DROP TABLE jobs; --",
    "') UNION SELECT user_id, hash FROM api_keys --",
    "\x00",
    "%00",
    "a\x00b",
    "%",
    "_",
    "%%",
    "a%",
    "\\",
    "*",
    "../../etc/passwd",
    "..",
    "ünïcödé ✓ 🦄",
    "\u202eevil",
    "\r\nX-Injected: 1",
    "${jndi:ldap://x/a}",
    "<script>alert(1)</script>",
    '{"$ne": null}',
    "-1",
    "1e309",
    "NaN",
    "null",
    "A" * 10_000,
]
# Already percent-encoded, sent as they are: bytes that are not UTF-8 (a lone surrogate),
# and an encoded slash that must not become a path separator.
RAW: list[str] = ["%ED%A0%80", "%FF%FE", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f"]

# Bodies that get a command past validation, so that its path parameter is what is tested.
BODIES: dict[tuple[str, str], Any] = {
    ("put", "/v1/admin/users/{user_id}/plan"): {"plan": "starter", "reason": "x"},
    ("post", "/v1/admin/jobs/{job_id}/refund"): {"reason": "x"},
}


def swept_parameters() -> list[tuple[str, str, str, str]]:
    """(method, path, parameter, location) of every path and query parameter."""
    return [
        (method, path, p["name"], p["in"])
        for method, path, op in operations()
        for p in op.get("parameters", [])
        if p["in"] in ("path", "query")
    ]


def fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


async def test_injection_strings_in_every_parameter(
    kit: Kit, api_pair: tuple[str, str], user: str
) -> None:
    """Every path and query parameter of every operation, through a real ``pinksea api``
    process, gets SQL, LIKE, NUL, traversal, unicode, header-splitting and very long strings.
    The attacker (and the admin, on admin routes) must get a 4xx problem or an answer without
    tenant A's data; admin searches must take LIKE wildcards literally."""
    v = await make_victim(kit)
    await kit.client.get("/v1/me", headers=kit.auth(user))
    await kit.project()
    admin = kit.auth("root", admin=True)
    # Harmless values for the parameters not under attack in a request.
    benign = {
        "job_id": str(uuid.uuid4()),
        "image_name": "nothing-here",
        "key_id": str(uuid.uuid4()),
        "user_id": user,
    }
    cases = swept_parameters()
    assert {(m, p) for m, p, _, _ in cases} >= {
        ("get", "/v1/jobs"),
        ("get", "/v1/images/{image_name}"),
        ("delete", "/v1/api-keys/{key_id}"),
        ("get", "/v1/admin/users"),
    }
    failures: list[str] = []
    gate = asyncio.Semaphore(8)

    async def attack(
        http: httpx.AsyncClient, method: str, path: str, name: str, where: str, value: str
    ) -> None:
        encoded = value if value in RAW else quote(value, safe="")
        others = {k: quote(b, safe="") for k, b in benign.items() if k != name}
        url = fill(path, others)
        if where == "path":
            url = url.replace("{" + name + "}", encoded)
        else:
            url = f"{url}?{name}={encoded}"
        headers = admin if path.startswith("/v1/admin") else kit.auth(user)
        body = BODIES.get((method, path))
        async with gate:
            r = await http.request(method, url, headers=headers, json=body)
        label = f"{method.upper()} {url[:120]}: {r.status_code}"
        if r.status_code >= 500:
            failures.append(f"{label} {r.text[:200]}")
        elif r.status_code >= 400 and not is_problem(r):
            failures.append(f"{label} is not problem+json")
        elif r.status_code < 300 and not path.startswith("/v1/admin"):
            leaked = [m for m in v.markers() if m in r.text]
            if leaked:
                failures.append(f"{label} shows tenant A's {leaked}")
        if path == "/v1/admin/users" and name == "query" and r.status_code == 200:
            # The query is matched literally: %, _ and \ are no wildcards.
            for item in r.json()["items"]:
                if value.lower() not in item["user_id"].lower():
                    failures.append(f"{label} matched {item['user_id']!r} for {value!r}")

    async with httpx.AsyncClient(base_url=api_pair[0], timeout=30) as http:
        await asyncio.gather(
            *(
                attack(http, method, path, name, where, value)
                for method, path, name, where in cases
                for value in [*PAYLOADS, *RAW]
            )
        )
    assert not failures, "\n".join(failures[:30])
    await assert_untouched(kit, v)


# ------------------------------------------------------------------- cross-tenant sweep


async def test_another_tenants_resources_are_404_everywhere(
    kit: Kit, api_app: FastAPI, other: str
) -> None:
    """User B, with a session and with an API key of their own, asks for each of user A's
    resources on every user-scoped route with a path parameter (from the OpenAPI document):
    every answer is 404, or 403 where the route documents it for B's kind of credential,
    nothing of A's shows, and A's data is unchanged afterwards."""
    v = await make_victim(kit)
    await kit.client.get("/v1/me", headers=kit.auth(other))
    await kit.set_plan(other, "pro")
    r = await kit.client.post("/v1/api-keys", json={"name": "b"}, headers=kit.auth(other))
    b_key = r.json()["key"]
    await kit.project()
    own = {
        "job_id": v.job_id,
        "image_name": v.image,
        "key_id": v.key_id,
        "upload_id": v.upload_id,
        "endpoint_id": v.endpoint_id,
        "board_id": v.board_id,
        "model_id": v.model_id,
        # A's endpoint is not B's: any delivery id under it is a 404.
        "delivery_id": "whd_" + "0" * 32,
    }
    parametrised = {
        (method, path)
        for method, path, op in operations()
        if "{" in path and not path.startswith("/v1/admin") and path not in SYSTEM_DATA
    }
    swept: set[tuple[str, str]] = set()
    async with client_from(api_app, fresh_address()) as c:
        for method, path, op in operations():
            if (method, path) not in parametrised:
                continue
            names = [p["name"] for p in op["parameters"] if p["in"] == "path"]
            unknown = [n for n in names if n not in own]
            assert not unknown, f"{method} {path}: give the sweep one of A's {unknown}"
            url = fill(path, own)
            for creds in (kit.auth(other), {"X-API-Key": b_key}):
                # Streamed, so that a stream wrongly opened would not hang the test.
                # An update that changes nothing, for PATCH.
                body_json: dict[str, object] | None = {} if method == "patch" else None
                async with c.stream(method, url, headers=creds, json=body_json) as r:
                    body = (await asyncio.wait_for(r.aread(), 10)).decode()
                allowed = {"404"} | ({"403"} if "X-API-Key" in creds else set())
                assert str(r.status_code) in allowed & set(op["responses"]), (method, url, body)
                assert is_problem(r) and v.user not in body
            swept.add((method, path))
        assert swept == parametrised
        # Every user-scoped list and account view: nothing of A's in B's answers.
        for method, path, op in operations():
            if method != "get" or "{" in path or path.startswith("/v1/admin"):
                continue
            if "401" not in op["responses"]:
                continue  # public (plans, probes)
            r = await c.get(path, headers=kit.auth(other))
            assert r.status_code == 200, (path, r.text)
            leaked = [m for m in v.markers() if m in r.text]
            assert not leaked, (path, leaked)
    await assert_untouched(kit, v)


# ------------------------------------------------------------------ sizes on the wire


def raw_exchange(base_url: str, request: bytes, *, read_s: float = 10) -> bytes:
    """One request written to a socket as it is (httpx would fix what is wrong with it)."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=read_s) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def statuses(raw: bytes) -> list[int]:
    return [
        int(line.split()[1])
        for line in raw.split(b"\r\n")
        if line.startswith(b"HTTP/1.1 ") and len(line.split()) > 1
    ]


def test_bodies_that_lie_about_their_size(kit: Kit, api_pair: tuple[str, str], user: str) -> None:
    """On a real ``pinksea api`` process (the in-process case of an honest or absent
    Content-Length is test_ops.py's): chunked past the limit, a Content-Length over the
    limit with a small body, and a small Content-Length followed by far more bytes."""
    limit = kit.settings.api_max_body_bytes
    token = kit.token(user)
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\n"
    )
    big = b'{"model": "tiny-sd", "prompt": "' + b"y" * (limit + 1000) + b'"}'

    chunked = head.encode() + b"Transfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(big), 4096):
        piece = big[i : i + 4096]
        chunked += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    chunked += b"0\r\n\r\n"
    raw = raw_exchange(api_pair[0], chunked)
    assert statuses(raw)[:1] == [413], raw[:300]
    assert b"application/problem+json" in raw and b"payload-too-large" in raw

    over = head.encode() + f"Content-Length: {limit * 100}\r\n\r\n".encode() + b"{}"
    raw = raw_exchange(api_pair[0], over)
    assert statuses(raw)[:1] == [413], raw[:300]

    # The server reads the 20 declared bytes (not JSON) and refuses them, or the rest as a
    # malformed next request: only 4xx, and nothing is accepted.
    under = head.encode() + b"Content-Length: 20\r\n\r\n" + big
    codes = statuses(raw_exchange(api_pair[0], under))
    assert codes and all(400 <= c < 500 for c in codes), codes


def test_huge_headers_and_urls_are_refused_not_crashed(
    kit: Kit, api_pair: tuple[str, str], user: str
) -> None:
    token = kit.token(user)
    for request in (
        # A 200 kB header, many headers, a 100 kB query string.
        f"GET /v1/me HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n"
        f"X-Junk: {'j' * 200_000}\r\n\r\n",
        f"GET /v1/me HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n"
        + "".join(f"X-H{i}: {i}\r\n" for i in range(5000))
        + "\r\n",
        f"GET /v1/jobs?cursor={'c' * 100_000} HTTP/1.1\r\nHost: api\r\n"
        f"Authorization: Bearer {token}\r\n\r\n",
    ):
        raw = raw_exchange(api_pair[0], request.encode())
        # Refused by the HTTP parser (4xx or a closed connection) or answered: never a 5xx.
        assert all(c < 500 for c in statuses(raw)), raw[:300]
