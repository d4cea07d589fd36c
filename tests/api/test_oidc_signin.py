"""Sign-in through a real OpenID Connect provider (infra/local/oidc.sh, part of make services)
issuing Cognito-shaped tokens: the API trusts its issuer and JWKS exactly as it trusts a
Cognito user pool in production (no dev tokens), and refuses another issuer, another app
client and another key.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from api.auth import sign_dev_token
from infra.settings import Settings
from rehearsal.oidc import OidcProvider, Tokens, provider_url, resign_with_stranger_key
from tests.api.conftest import problem_type
from tests.conftest import reachable

pytestmark = pytest.mark.integration
CLIENT_ID = "pinksea-web"  # the app client the API accepts (jwt_audience)


@pytest.fixture(scope="module")
async def provider() -> OidcProvider:
    provider = OidcProvider(provider_url())
    async with httpx.AsyncClient(timeout=5) as http:
        with reachable("OIDC provider", provider.issuer):
            await provider.discover(http)
    return provider


@pytest.fixture(scope="module")
async def oidc_api(
    provider: OidcProvider, api_settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    """The API trusting only the provider: its JWKS from the discovery document, dev tokens
    off (the session's database, Redis and Kafka prefixes)."""
    async with httpx.AsyncClient(timeout=5) as http:
        jwks_uri = (await provider.discover(http))["jwks_uri"]
    settings = api_settings.model_copy(
        update={
            "jwt_issuer": provider.issuer,
            "jwks_url": jwks_uri,
            "jwt_audience": CLIENT_ID,
            "dev_jwt_enabled": False,
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            yield client


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def _name(role: str) -> str:
    return f"{role}-{uuid.uuid4().hex[:10]}"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_hosted_sign_in_id_token(
    provider: OidcProvider, oidc_api: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    user = _name("user")
    tokens = await provider.sign_in(http, user, CLIENT_ID)
    claims = Tokens.claims(tokens.id_token)
    assert claims["aud"] == CLIENT_ID and claims["token_use"] == "id"
    me = await oidc_api.get("/v1/me", headers=_bearer(tokens.id_token))
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["user_id"] == user and body["email"] == f"{user}@users.pinksea.test"
    assert body["auth"] == "jwt" and not body["is_admin"]
    r = await oidc_api.get("/v1/admin/users", headers=_bearer(tokens.id_token))
    assert r.status_code == 403 and problem_type(r) == "admin-required"


async def test_access_token_names_the_client_in_client_id(
    provider: OidcProvider, oidc_api: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    user = _name("user")
    token = (await provider.password_sign_in(http, user, CLIENT_ID)).access_token
    claims = Tokens.claims(token)
    assert "aud" not in claims
    assert claims["token_use"] == "access" and claims["client_id"] == CLIENT_ID
    me = await oidc_api.get("/v1/me", headers=_bearer(token))
    assert me.status_code == 200, me.text
    assert me.json()["user_id"] == user


async def test_admin_by_cognito_group(
    provider: OidcProvider, oidc_api: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    admin = _name("admin")
    for token in (
        (await provider.sign_in(http, admin, CLIENT_ID)).id_token,
        (await provider.password_sign_in(http, admin, CLIENT_ID)).access_token,
    ):
        assert Tokens.claims(token)["cognito:groups"] == ["admin"]
        r = await oidc_api.get("/v1/admin/users", headers=_bearer(token))
        assert r.status_code == 200, r.text
        assert (await oidc_api.get("/v1/me", headers=_bearer(token))).json()["is_admin"]


async def test_another_issuer_client_or_key_is_refused(
    provider: OidcProvider,
    oidc_api: httpx.AsyncClient,
    http: httpx.AsyncClient,
    api_settings: Settings,
) -> None:
    user = _name("user")
    hosted = await provider.sign_in(http, user, CLIENT_ID)
    refused = {
        # Same server and claims, another user pool.
        "wrong issuer": (await provider.other().sign_in(http, user, CLIENT_ID)).id_token,
        # The same pool, but issued to another app client.
        "wrong audience (ID token)": (await provider.sign_in(http, user, "other-app")).id_token,
        "wrong audience (access token)": (
            await provider.password_sign_in(http, user, "other-app")
        ).access_token,
        # The kid of the pool's key, the signature of another key.
        "wrong key": resign_with_stranger_key(hosted.id_token),
        # The hosted sign-in's access token has neither aud nor token_use=access.
        "no audience at all": hosted.access_token,
        # Dev tokens are a local convenience; a deployment never accepts them.
        "dev token": sign_dev_token(api_settings, user),
    }
    for case, token in refused.items():
        r = await oidc_api.get("/v1/me", headers=_bearer(token))
        assert r.status_code == 401, f"{case}: {r.status_code} {r.text}"
        assert problem_type(r) == "unauthorized", case
    assert (await oidc_api.get("/v1/me", headers=_bearer(hosted.id_token))).status_code == 200
