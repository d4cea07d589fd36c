"""Who is calling: Cognito-style JWTs (RS256 against a JWKS) and Pinksea API keys.

JWTs: RS256 only (``alg: none``, HS256 and every other algorithm are refused before any key is
touched, so a public key can never be used as an HMAC secret); issuer, audience, ``exp`` and
``nbf`` checked; the key is found by ``kid`` in the issuer's JWKS, which is cached and fetched
again (at most once per ``jwks_refresh_min_interval_s``) when an unknown ``kid`` shows up, as
happens after a key rotation. Cognito ID tokens carry ``aud``; access tokens carry
``client_id`` instead: both are checked against ``jwt_audience``.

Dev tokens (``pinksea dev-token``) come from a local RSA key and their own issuer; they are
accepted only when ``dev_jwt_enabled`` is set.

API keys ``psk_<prefix>_<secret>``: 32 random bytes of secret, shown once. The table keeps the
SHA-256 of the whole key (enough for a high-entropy secret: nothing to brute-force) and the
visible prefix that finds the row; the digests are compared in constant time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from infra.settings import Settings

log = structlog.get_logger("api.auth")

DEV_ISSUER = "urn:pinksea:dev"
ALGORITHM = "RS256"
LEEWAY_S = 30  # clock skew tolerated on exp / nbf / iat
VERIFIED_CACHE = 10_000  # tokens whose signature this process has checked
API_KEY_PREFIX = "psk_"
# Matched with fullmatch: ``$`` in a Python pattern also matches before a final newline, so
# ``match`` would take "alice\n" for a user id (another account that prints as "alice").
_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}")
_API_KEY = re.compile(r"psk_([A-Za-z0-9]{10})_([A-Za-z0-9_-]{43})")


class AuthError(Exception):
    """The credentials are not acceptable; ``detail`` says why (safe to show)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Principal:
    user_id: str
    is_admin: bool
    via: str  # "jwt" | "api_key"
    key_id: str | None = None
    email: str | None = None


# --------------------------------------------------------------------------- dev issuer


def dev_key_path(settings: Settings) -> Path:
    return Path(settings.dev_jwt_key_path).expanduser()


_dev_keys: dict[Path, rsa.RSAPrivateKey] = {}


def load_or_create_dev_key(path: Path) -> rsa.RSAPrivateKey:
    """The dev issuer's private key, generated on first use (mode 0600)."""
    cached = _dev_keys.get(path)
    if cached is not None and path.exists():
        return cached  # loading validates the key, which takes tens of milliseconds
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Write then rename: two processes starting together never read half a key.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        if not path.exists():
            os.replace(tmp, path)
        else:
            tmp.unlink(missing_ok=True)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    _dev_keys[path] = loaded
    return loaded


def public_jwk(key: rsa.RSAPublicKey) -> dict[str, str]:
    jwk: dict[str, str] = json.loads(RSAAlgorithm.to_jwk(key))
    # RFC 7638 thumbprint as the kid: stable for the key, different for any other key.
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    jwk["kid"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()[:16]
    jwk.update(alg=ALGORITHM, use="sig")
    return jwk


def dev_jwks(settings: Settings) -> dict[str, Any]:
    key = load_or_create_dev_key(dev_key_path(settings))
    return {"keys": [public_jwk(key.public_key())]}


def sign_dev_token(
    settings: Settings,
    user: str,
    *,
    admin: bool = False,
    ttl: timedelta = timedelta(hours=12),
    email: str | None = None,
    now: datetime | None = None,
) -> str:
    key = load_or_create_dev_key(dev_key_path(settings))
    kid = public_jwk(key.public_key())["kid"]
    at = now or datetime.now(UTC)
    claims: dict[str, Any] = {
        "iss": DEV_ISSUER,
        "aud": settings.jwt_audience,
        "sub": user,
        "iat": int(at.timestamp()),
        "nbf": int(at.timestamp()),
        "exp": int((at + ttl).timestamp()),
        "token_use": "id",
        "cognito:username": user,
    }
    if email:
        claims["email"] = email
    if admin:
        claims["cognito:groups"] = [settings.admin_group]
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})


# ------------------------------------------------------------------------- JWT verifier


@dataclass
class _KeySet:
    url: str | None  # None: local (the dev issuer)
    keys: dict[str, Any]
    fetched_at: float = 0.0
    last_attempt: float = 0.0


class JwtVerifier:
    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.http = http
        self.issuers: dict[str, _KeySet] = {}
        self._lock = asyncio.Lock()
        self._verified: dict[str, tuple[Principal, float]] = {}
        if settings.jwt_issuer:
            url = settings.jwks_url or settings.jwt_issuer.rstrip("/") + "/.well-known/jwks.json"
            self.issuers[settings.jwt_issuer] = _KeySet(url=url, keys={})
        if settings.dev_jwt_enabled:
            self.issuers[DEV_ISSUER] = _KeySet(url=None, keys=_parse_jwks(dev_jwks(settings)))

    async def verify(self, token: str) -> Principal:
        # A client sends the same token for its whole life: verifying the signature once per
        # process is enough. The entry is only used until the token's own exp.
        hit = self._verified.get(token)
        if hit is not None:
            principal, exp = hit
            if time.time() < exp:
                return principal
            del self._verified[token]
        principal, exp = await self._verify(token)
        self._verified[token] = (principal, exp)
        while len(self._verified) > VERIFIED_CACHE:
            self._verified.pop(next(iter(self._verified)))
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("the token is not a well-formed JWT") from None
        if header.get("alg") != ALGORITHM:
            raise AuthError(f"tokens must be signed with {ALGORITHM}")
        issuer = unverified.get("iss")
        keyset = self.issuers.get(issuer) if isinstance(issuer, str) else None
        if keyset is None:
            raise AuthError("the token's issuer is not trusted here")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise AuthError("the token has no key id (kid)")
        key = await self._key(keyset, kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired; sign in again") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("the token is not valid yet") from None
        except jwt.PyJWTError:
            raise AuthError("the token's signature or claims are invalid") from None
        self._check_audience(claims)
        user_id = claims.get("sub")
        if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
            raise AuthError("the token's subject is not a valid user id")
        groups = claims.get("cognito:groups") or []
        principal = Principal(
            user_id=user_id,
            is_admin=isinstance(groups, list) and self.settings.admin_group in groups,
            via="jwt",
            email=claims.get("email") if isinstance(claims.get("email"), str) else None,
        )
        return principal, float(claims["exp"])

    def _check_audience(self, claims: dict[str, Any]) -> None:
        expected = self.settings.jwt_audience
        aud = claims.get("aud")
        if aud is not None:
            ok = aud == expected or (isinstance(aud, list) and expected in aud)
        else:
            # Cognito access tokens name the app client in client_id instead of aud.
            ok = claims.get("token_use") == "access" and claims.get("client_id") == expected
        if not ok:
            raise AuthError("the token was issued for another audience")

    async def _key(self, keyset: _KeySet, kid: str) -> Any:
        key = keyset.keys.get(kid)
        stale = time.monotonic() - keyset.fetched_at > self.settings.jwks_cache_ttl_s
        if keyset.url is not None and (key is None or stale):
            await self._refresh(keyset, force=key is None)
            key = keyset.keys.get(kid)
        if key is None:
            raise AuthError("the token was signed with an unknown key")
        return key

    async def _refresh(self, keyset: _KeySet, *, force: bool) -> None:
        async with self._lock:
            now = time.monotonic()
            fresh = now - keyset.fetched_at <= self.settings.jwks_cache_ttl_s
            if fresh and not force:
                return  # another request refreshed it while we waited
            # Unknown kids are cheap to send: never let them turn into a fetch per request.
            if now - keyset.last_attempt < self.settings.jwks_refresh_min_interval_s:
                return
            keyset.last_attempt = now
            assert keyset.url is not None
            try:
                http = self.http or httpx.AsyncClient(timeout=5)
                try:
                    response = await http.get(keyset.url)
                    response.raise_for_status()
                    keys = _parse_jwks(response.json())
                finally:
                    if self.http is None:
                        await http.aclose()
            except (httpx.HTTPError, ValueError) as e:
                log.warning("jwks fetch failed", url=keyset.url, error=repr(e))
                return  # keep the keys we had
            keyset.keys = keys
            keyset.fetched_at = now


def _parse_jwks(document: dict[str, Any]) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for jwk in document.get("keys", []):
        if jwk.get("kty") != "RSA" or not jwk.get("kid"):
            continue
        if jwk.get("alg") not in (None, ALGORITHM) or jwk.get("use") not in (None, "sig"):
            continue
        keys[jwk["kid"]] = RSAAlgorithm.from_jwk(jwk)
    return keys


# ------------------------------------------------------------------------------ API keys


@dataclass(frozen=True)
class NewApiKey:
    key: str  # shown once
    prefix: str
    hash: str


def new_api_key() -> NewApiKey:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    visible = "".join(secrets.choice(alphabet) for _ in range(10))
    secret = secrets.token_urlsafe(32)  # 43 characters
    key = f"{API_KEY_PREFIX}{visible}_{secret}"
    return NewApiKey(key=key, prefix=f"{API_KEY_PREFIX}{visible}", hash=hash_api_key(key))


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_prefix(key: str) -> str | None:
    """The visible prefix of a well-formed key, or None."""
    match = _API_KEY.fullmatch(key)
    return f"{API_KEY_PREFIX}{match.group(1)}" if match else None


def api_key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(key), stored_hash)


def looks_like_api_key(token: str) -> bool:
    return token.startswith(API_KEY_PREFIX)
