"""Sign-in through the local OpenID Connect provider (infra/local/oidc.sh), as a user would.

The provider is a real one (NAV's mock-oauth2-server): it publishes a discovery document and a
JWKS, runs the authorization code flow with its sign-in page and PKCE, and signs RS256 tokens
in the shapes of a Cognito user pool (infra/local/oidc/config.json): the ID token of the
hosted sign-in carries ``aud`` = the app client, the access token of the password flow carries
``client_id`` and no ``aud``, and users named ``admin-*`` are in the ``admin`` group.

The tests (tests/api/test_oidc_signin.py) and the rehearsal both sign in through here.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

POOL = "pinksea-pool"  # the issuer id of infra/local/oidc/config.json
OTHER_POOL = "other-pool"  # any other issuer id: same server, keys and issuer of its own
REDIRECT_URI = "https://app.pinksea.test/signed-in"  # never fetched: the code is read off it


def provider_url(port: int | None = None) -> str:
    """The provider of ``make services`` (OIDC_PORT, as infra/local/oidc.sh reads it)."""
    return f"http://127.0.0.1:{port or int(os.environ.get('OIDC_PORT', '8090'))}"


class SignInError(RuntimeError):
    pass


@dataclass(frozen=True)
class Tokens:
    id_token: str
    access_token: str

    @staticmethod
    def claims(token: str) -> dict[str, Any]:
        """What a token says, unverified (the API does the verifying)."""
        return dict(jwt.decode(token, options={"verify_signature": False}))


@dataclass(frozen=True)
class OidcProvider:
    base_url: str
    pool: str = POOL

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/{self.pool}"

    def other(self, pool: str = OTHER_POOL) -> OidcProvider:
        return OidcProvider(self.base_url, pool)

    async def discover(self, http: httpx.AsyncClient) -> dict[str, Any]:
        """The discovery document; its ``issuer`` must be the URL it was fetched under."""
        r = await http.get(f"{self.issuer}/.well-known/openid-configuration")
        r.raise_for_status()
        document: dict[str, Any] = r.json()
        if document.get("issuer") != self.issuer:
            raise SignInError(f"discovery names issuer {document.get('issuer')!r}")
        return document

    async def sign_in(self, http: httpx.AsyncClient, username: str, client_id: str) -> Tokens:
        """The hosted sign-in (authorization code with PKCE S256): the sign-in page, the form
        post, the redirect with the code, the code exchanged at the token endpoint."""
        verifier = secrets.token_urlsafe(48)
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        state, nonce = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        params = {
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "response_type": "code",
            "scope": "openid email",
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        page = await http.get(f"{self.issuer}/authorize", params=params)
        if page.status_code != 200 or 'name="username"' not in page.text:
            raise SignInError(f"no sign-in page at {self.issuer}/authorize ({page.status_code})")
        posted = await http.post(
            f"{self.issuer}/authorize", params=params, data={"username": username}
        )
        location = posted.headers.get("location", "")
        if posted.status_code != 302 or not location.startswith(REDIRECT_URI):
            raise SignInError(f"the sign-in did not redirect back ({posted.status_code})")
        query = parse_qs(urlsplit(location).query)
        if query.get("state") != [state]:
            raise SignInError("the redirect carries another state")
        tokens = await self._token(
            http,
            grant_type="authorization_code",
            code=query["code"][0],
            redirect_uri=REDIRECT_URI,
            client_id=client_id,
            code_verifier=verifier,
        )
        if Tokens.claims(tokens.id_token).get("nonce") != nonce:
            raise SignInError("the ID token carries another nonce")
        return tokens

    async def password_sign_in(
        self, http: httpx.AsyncClient, username: str, client_id: str
    ) -> Tokens:
        """The password flow (Cognito's USER_PASSWORD_AUTH): its access token is the one
        shaped like Cognito's (client_id, no aud)."""
        return await self._token(
            http,
            grant_type="password",
            username=username,
            password="any",  # the provider checks no passwords
            client_id=client_id,
            scope="openid email",
        )

    async def _token(self, http: httpx.AsyncClient, **form: str) -> Tokens:
        r = await http.post(f"{self.issuer}/token", data=form)
        if r.status_code != 200:
            raise SignInError(f"token endpoint answered {r.status_code}: {r.text[:200]}")
        body = r.json()
        return Tokens(id_token=body["id_token"], access_token=body["access_token"])


def resign_with_stranger_key(token: str) -> str:
    """The same header (kid included) and claims, signed with a key the provider never had."""
    header = jwt.get_unverified_header(token)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(Tokens.claims(token), stranger, algorithm="RS256", headers=header)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
