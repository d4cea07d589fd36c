"""Abuse limits that hold behind the load balancer (issue 17).

The app runs here as production runs it: every connection comes from the load balancer (a
peer in its subnets, PINKSEA_FORWARDED_ALLOW_IPS), which appends the client's address to
X-Forwarded-For. Failed API-key attempts are limited per client address and per key prefix,
and only failures are: a valid key keeps working whoever else fails next to it. A token whose
subject ends in a newline is no user id.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.auth import api_key_prefix, new_api_key
from api.ratelimit import address_identity, limit_for
from infra.settings import Settings
from tests.api.conftest import Kit, problem_type

pytestmark = pytest.mark.integration

ALB_SUBNETS = "10.0.1.0/24,10.0.2.0/24"  # envs/production.tfvars: public_subnet_cidrs
ALB_NODE = "10.0.2.37"


@pytest.fixture(scope="module")
async def alb_app(api_settings: Settings) -> AsyncIterator[FastAPI]:
    """The API of the session's stack, configured as deployed behind the load balancer."""
    app = create_app(api_settings.model_copy(update={"forwarded_allow_ips": ALB_SUBNETS}))
    async with app.router.lifespan_context(app):
        yield app


@contextlib.asynccontextmanager
async def through(app: FastAPI, peer: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(peer, 41000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield c


def fresh_client() -> str:
    n = uuid.uuid4().int
    return f"203.0.{n % 113}.{(n >> 8) % 250 + 1}"  # documentation ranges: never a real client


def forwarded(client: str, *spoofed: str) -> dict[str, str]:
    """X-Forwarded-For as the load balancer sends it: whatever the client sent, then the
    address it saw."""
    return {"X-Forwarded-For": ", ".join([*spoofed, client])}


async def pro_key(kit: Kit) -> tuple[str, str]:
    user = f"k-{uuid.uuid4().hex[:10]}"
    await kit.client.get("/v1/me", headers=kit.auth(user))
    await kit.set_plan(user, "pro")
    r = await kit.client.post("/v1/api-keys", json={"name": "ci"}, headers=kit.auth(user))
    assert r.status_code == 201, r.text
    return user, str(r.json()["key"])


def junk(prefix: str | None = None) -> str:
    """A well-formed key nobody has: a random one, or a wrong secret for ``prefix``."""
    fake = new_api_key().key
    if prefix is None:
        return fake
    return f"{prefix}_{fake.split('_', 2)[2]}"


async def test_junk_keys_from_one_client_do_not_lock_out_the_others(
    kit: Kit, alb_app: FastAPI
) -> None:
    """Every request comes from the load balancer's address; the limit counts the client
    that X-Forwarded-For names, so one client's junk keys refuse only that client's junk."""
    user, key = await pro_key(kit)
    bound = limit_for("auth", "trial")
    attacker, customer = fresh_client(), fresh_client()
    async with through(alb_app, ALB_NODE) as alb:
        for i in range(bound):
            r = await alb.get("/v1/me", headers={"X-API-Key": junk(), **forwarded(attacker)})
            assert r.status_code == 401, (i, r.text)
        r = await alb.get("/v1/me", headers={"X-API-Key": junk(), **forwarded(attacker)})
        assert r.status_code == 429 and problem_type(r) == "rate-limited"
        assert "your address" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
        # Another client behind the same load balancer: its mistakes are 401s, its key works.
        r = await alb.get("/v1/me", headers={"X-API-Key": junk(), **forwarded(customer)})
        assert r.status_code == 401, r.text
        r = await alb.get("/v1/me", headers={"X-API-Key": key, **forwarded(customer)})
        assert r.status_code == 200 and r.json()["user_id"] == user


async def test_a_valid_key_works_from_an_address_over_its_bound(kit: Kit, alb_app: FastAPI) -> None:
    """A NAT shared by a guesser and a customer: the guesser's junk is refused, the
    customer's valid key is not."""
    user, key = await pro_key(kit)
    shared = fresh_client()
    async with through(alb_app, ALB_NODE) as alb:
        for _ in range(limit_for("auth", "trial") + 1):
            await alb.get("/v1/me", headers={"X-API-Key": junk(), **forwarded(shared)})
        r = await alb.get("/v1/me", headers={"X-API-Key": junk(), **forwarded(shared)})
        assert r.status_code == 429
        r = await alb.get("/v1/me", headers={"Authorization": f"Bearer {key}", **forwarded(shared)})
        assert r.status_code == 200 and r.json()["user_id"] == user
        r = await alb.get("/v1/me", headers={"X-API-Key": junk(), **forwarded(shared)})
        assert r.status_code == 429, "the valid key did not reset the address's failures"


async def test_junk_against_one_prefix_is_limited_without_locking_out_others(
    kit: Kit, alb_app: FastAPI
) -> None:
    """Secrets tried for one prefix from many addresses: past the prefix's bound they are
    429s; another prefix's failures are still 401s; the prefix's owner keeps working."""
    user, key = await pro_key(kit)
    _, other_key = await pro_key(kit)
    prefix, other_prefix = api_key_prefix(key), api_key_prefix(other_key)
    assert prefix and other_prefix
    bound = limit_for("auth_key", "trial")
    assert bound < limit_for("auth", "trial")  # reached before any address's bound
    async with through(alb_app, ALB_NODE) as alb:
        for i in range(bound):
            headers = {"X-API-Key": junk(prefix), **forwarded(fresh_client())}
            assert (await alb.get("/v1/me", headers=headers)).status_code == 401, i
        r = await alb.get(
            "/v1/me", headers={"X-API-Key": junk(prefix), **forwarded(fresh_client())}
        )
        assert r.status_code == 429 and problem_type(r) == "rate-limited"
        assert prefix in r.json()["detail"]
        r = await alb.get(
            "/v1/me", headers={"X-API-Key": junk(other_prefix), **forwarded(fresh_client())}
        )
        assert r.status_code == 401, r.text
        r = await alb.get("/v1/me", headers={"X-API-Key": key, **forwarded(fresh_client())})
        assert r.status_code == 200 and r.json()["user_id"] == user


async def test_forwarded_for_counts_only_from_the_trusted_proxies(
    kit: Kit, alb_app: FastAPI
) -> None:
    """A client cannot pick its address: addresses it writes into X-Forwarded-For itself
    are ignored (the load balancer's is the last one, and a peer outside its subnets is
    not trusted at all), so rotating them does not escape the bound."""
    bound = limit_for("auth", "trial")
    attacker = fresh_client()
    async with through(alb_app, ALB_NODE) as alb:
        for _ in range(bound):
            spoofed = forwarded(attacker, fresh_client(), fresh_client())
            await alb.get("/v1/me", headers={"X-API-Key": junk(), **spoofed})
        r = await alb.get("/v1/me", headers={"X-API-Key": junk(), **forwarded(attacker, "1.2.3.4")})
        assert r.status_code == 429
    direct = fresh_client()  # reaches the API without the load balancer (never, in production)
    async with through(alb_app, direct) as c:
        for _ in range(bound):
            await c.get("/v1/me", headers={"X-API-Key": junk(), **forwarded(fresh_client())})
        r = await c.get("/v1/me", headers={"X-API-Key": junk(), **forwarded(fresh_client())})
        assert r.status_code == 429


def test_address_identity() -> None:
    assert address_identity("203.0.113.9") == "203.0.113.9"
    # An IPv6 client is its /64: a host picks any address of it at will.
    assert address_identity("2001:db8:1:2:3:4:5:6") == address_identity("2001:db8:1:2::9")
    assert address_identity("2001:db8:1:2::9") != address_identity("2001:db8:1:3::9")
    assert address_identity("::ffff:203.0.113.9") == "203.0.113.9"
    assert address_identity(None) == "unknown"
    assert address_identity("not an address").startswith("name-")


def test_forwarded_allow_ips_is_validated() -> None:
    assert Settings(forwarded_allow_ips=" 10.0.1.0/24 , 10.0.2.5 ").forwarded_allow_ips == (
        "10.0.1.0/24,10.0.2.5"
    )
    for bad in ("10.0.1.7/24", "alb.internal", "10.0.1.0/33"):
        with pytest.raises(ValueError, match="not an IP address or CIDR range"):
            Settings(forwarded_allow_ips=bad)
    with pytest.raises(ValueError, match="trusts any client"):
        Settings(environment="staging", forwarded_allow_ips="*")


# ------------------------------------------------------------------- full-match validation


async def test_a_subject_ending_in_a_newline_is_not_a_user(kit: Kit, user: str) -> None:
    r = await kit.client.get("/v1/me", headers={"Authorization": f"Bearer {kit.token(user)}"})
    assert r.status_code == 200
    token = kit.token(f"{user}\n")
    r = await kit.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and problem_type(r) == "unauthorized", r.text
    assert "subject" in r.json()["detail"]


def test_api_key_prefix_needs_the_whole_key() -> None:
    key = new_api_key().key
    assert api_key_prefix(key) == key[:14]
    assert api_key_prefix(key + "\n") is None
    assert api_key_prefix(key + "x") is None


async def test_path_patterns_refuse_a_trailing_newline(kit: Kit) -> None:
    """Patterns in the routes' parameters are pydantic's (Rust regex: ``$`` is the end)."""
    admin = kit.auth("root", admin=True)
    r = await kit.client.get("/v1/admin/users/alice%0A/ledger", headers=admin)
    assert r.status_code == 422, r.text
