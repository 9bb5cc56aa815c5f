"""Verification of the portal's JWTs: HS256 with a shared secret, or RS256/ES256 from a JWKS."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import structlog

from app.config import Settings
from app.emails import single_address
from app.errors import ServiceUnavailable, Unauthorized
from app.schemas import CONTROL_CHARACTERS

log = structlog.get_logger(__name__)

ASYMMETRIC_ALGORITHMS = ["RS256", "ES256"]
_JWKS_MIN_REFRESH_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified portal user."""

    user_id: str
    email: str | None
    """The token's `email` claim when it is exactly one usable address (`app.emails`)."""
    is_admin: bool
    email_refused: bool = False
    """The token has an `email` claim that is not one usable address (so `email` is None):
    where the address would be kept for notifications, that is a 422."""


class JwksCache:
    """Keys from `BILLING_JWT_JWKS_URL`, refreshed every `ttl` seconds (so a key the identity
    provider removed stops being trusted) and when a token names a `kid` we do not have. Fetches
    happen at most every 30 s, so unknown kids cannot hammer the identity provider. When the
    provider cannot be reached, keys we have keep working; a token we cannot check is a 503."""

    def __init__(
        self, url: str, http: httpx.AsyncClient | None = None, *, ttl: float = 300.0
    ) -> None:
        self.url = url
        self.ttl = ttl
        self._http = http
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -math.inf
        self._failed_at = -math.inf
        self._lock = asyncio.Lock()

    async def _fetch(self) -> None:
        client = self._http or httpx.AsyncClient(timeout=5.0)
        try:
            response = await client.get(self.url)
            response.raise_for_status()
            document = response.json()
        finally:
            if self._http is None:
                await client.aclose()
        if isinstance(document, dict) and document.get("keys") == []:
            self._keys = {}  # every key withdrawn: nothing verifies until new ones appear
        else:
            jwk_set = jwt.PyJWKSet.from_dict(document)
            self._keys = {key.key_id: key for key in jwk_set.keys if key.key_id}
        self._fetched_at = time.monotonic()

    def _fresh(self, now: float) -> bool:
        return now - self._fetched_at < self.ttl

    async def get(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is not None and self._fresh(time.monotonic()):
            return key
        async with self._lock:
            now = time.monotonic()
            last_attempt = max(self._fetched_at, self._failed_at)
            if (not self._fresh(now) or kid not in self._keys) and (
                now - last_attempt >= _JWKS_MIN_REFRESH_SECONDS
            ):
                try:
                    await self._fetch()
                except (httpx.HTTPError, jwt.PyJWTError, ValueError) as exc:
                    log.warning("jwks_fetch_failed", url=self.url, error=str(exc))
                    self._failed_at = now
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._failed_at > self._fetched_at:
            raise ServiceUnavailable(
                "The identity provider's signing keys cannot be fetched; retry shortly.",
                headers={"Retry-After": str(int(_JWKS_MIN_REFRESH_SECONDS))},
            )
        raise Unauthorized("The token is signed with an unknown key.")


class JwtVerifier:
    """Checks signature, `exp` (required), `iss` and `aud` when configured, with a small leeway."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.jwks = (
            JwksCache(settings.jwt_jwks_url, http, ttl=settings.jwt_jwks_ttl_seconds)
            if settings.jwt_jwks_url
            else None
        )

    async def verify(self, token: str) -> Principal:
        s = self.settings
        try:
            if self.jwks is not None:
                header = jwt.get_unverified_header(token)
                kid = header.get("kid")
                if not kid or header.get("alg") not in ASYMMETRIC_ALGORITHMS:
                    raise Unauthorized("The token must be RS256 or ES256 with a key id.")
                key: Any = (await self.jwks.get(kid)).key
                algorithms = ASYMMETRIC_ALGORITHMS
            else:
                if s.jwt_secret is None:
                    raise Unauthorized("No JWT verification is configured.")
                key = s.jwt_secret.get_secret_value()
                algorithms = ["HS256"]
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=s.jwt_leeway_seconds,
                options={"require": ["exp", "sub"], "verify_aud": s.jwt_audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The token has expired.") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized("The token is not meant for this service.") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized("The token was issued by someone else.") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("The token is invalid.") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255 or CONTROL_CHARACTERS.search(sub):
            raise Unauthorized("The token has no usable subject.")
        email_claim = claims.get("email")
        email = single_address(email_claim)
        return Principal(
            user_id=sub,
            email=email,
            is_admin=_has_admin_role(claims.get(s.jwt_admin_claim), s.jwt_admin_value),
            email_refused=email is None and email_claim not in (None, ""),
        )


def _has_admin_role(claim: Any, admin_value: str) -> bool:
    """The claim equals the configured value, or is a list of roles with an element equal to
    it. Nothing else is admin: not `true`, not `1`, not a string that merely contains it."""
    if isinstance(claim, str):
        return claim == admin_value
    if isinstance(claim, list):
        return any(isinstance(role, str) and role == admin_value for role in claim)
    return False


def mint_token(
    settings: Settings,
    user_id: str,
    *,
    email: str | None = None,
    admin: bool = False,
    ttl: timedelta = timedelta(hours=12),
) -> str:
    """An HS256 token for local use and tests (the portal's identity provider does this in
    production)."""
    if settings.jwt_secret is None:
        raise ValueError("BILLING_JWT_SECRET is not set")
    now = datetime.now(UTC)
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl}
    if email:
        claims["email"] = email
    if admin:
        claims[settings.jwt_admin_claim] = settings.jwt_admin_value
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
