"""RS256/ES256 tokens verified against a JWKS (served over HTTP by a mock transport)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.auth.jwt import JwtVerifier
from app.config import Settings
from app.errors import ServiceUnavailable, Unauthorized


def _jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    algo = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    jwk: dict[str, Any] = json.loads(algo.to_jwk(private_key.public_key()))
    jwk.update(kid=kid, alg=alg, use="sig")
    return jwk


def _token(private_key: Any, kid: str, alg: str, **claims: Any) -> str:
    now = datetime.now(UTC)
    body = {"sub": "user-9", "exp": now + timedelta(minutes=5), "aud": "billing", **claims}
    return jwt.encode(body, private_key, algorithm=alg, headers={"kid": kid})


class Jwks:
    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.failing = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.failing:
            return httpx.Response(502, text="bad gateway")
        return httpx.Response(200, json={"keys": self.keys})


@pytest.fixture
def jwks() -> Jwks:
    return Jwks()


@pytest.fixture
def verifier(jwks: Jwks) -> JwtVerifier:
    settings = Settings(
        _env_file=None,
        environment="test",
        jwt_jwks_url="https://id.example/.well-known/jwks.json",
        jwt_audience="billing",
    )
    return JwtVerifier(settings, httpx.AsyncClient(transport=httpx.MockTransport(jwks.handler)))


async def test_rs256_and_es256_tokens_verify_against_the_jwks(
    jwks: Jwks, verifier: JwtVerifier
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks.keys = [_jwk(rsa_key, "r1", "RS256"), _jwk(ec_key, "e1", "ES256")]
    assert (await verifier.verify(_token(rsa_key, "r1", "RS256"))).user_id == "user-9"
    assert (await verifier.verify(_token(ec_key, "e1", "ES256"))).user_id == "user-9"
    assert jwks.fetches == 1  # cached


async def test_an_unknown_kid_refreshes_the_keys_once(jwks: Jwks, verifier: JwtVerifier) -> None:
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.keys = [_jwk(old, "old", "RS256")]
    await verifier.verify(_token(old, "old", "RS256"))
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.keys.append(_jwk(new, "new", "RS256"))
    # The identity provider rotated keys: the first token with the new kid forces a refresh,
    # which is allowed since the cache is older than the minimum refresh interval.
    assert verifier.jwks is not None
    verifier.jwks._fetched_at -= 60
    assert (await verifier.verify(_token(new, "new", "RS256"))).user_id == "user-9"
    assert jwks.fetches == 2
    with pytest.raises(Unauthorized):
        await verifier.verify(_token(new, "never-published", "RS256"))
    assert jwks.fetches == 2  # unknown kids cannot force a refetch within 30 s


async def test_hs256_is_refused_when_a_jwks_is_configured(
    jwks: Jwks, verifier: JwtVerifier
) -> None:
    token = jwt.encode(
        {"sub": "u", "exp": datetime.now(UTC) + timedelta(minutes=1), "aud": "billing"},
        "x" * 40,
        algorithm="HS256",
        headers={"kid": "r1"},
    )
    with pytest.raises(Unauthorized):
        await verifier.verify(token)


async def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(
    jwks: Jwks, verifier: JwtVerifier
) -> None:
    real = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.keys = [_jwk(real, "r1", "RS256")]
    with pytest.raises(Unauthorized):
        await verifier.verify(_token(forged, "r1", "RS256"))


async def test_jwks_keys_are_refreshed_after_their_ttl(jwks: Jwks, verifier: JwtVerifier) -> None:
    removed = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.keys = [_jwk(removed, "old", "RS256")]
    token = _token(removed, "old", "RS256")
    assert (await verifier.verify(token)).user_id == "user-9"
    # The identity provider rotates the key out; once the TTL has passed it is not trusted.
    jwks.keys = [
        _jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), "new", "RS256")
    ]
    assert verifier.jwks is not None
    verifier.jwks._fetched_at -= verifier.jwks.ttl + 1
    with pytest.raises(Unauthorized):
        await verifier.verify(token)
    assert jwks.fetches == 2


async def test_a_jwks_fetch_failure_is_503_not_401(jwks: Jwks, verifier: JwtVerifier) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.keys = [_jwk(key, "k1", "RS256")]
    jwks.failing = True
    with pytest.raises(ServiceUnavailable) as raised:
        await verifier.verify(_token(key, "k1", "RS256"))
    assert raised.value.status == 503
    assert raised.value.headers["Retry-After"]
    # Within the minimum interval the provider is not asked again, and the answer stays 503.
    with pytest.raises(ServiceUnavailable):
        await verifier.verify(_token(key, "k1", "RS256"))
    assert jwks.fetches == 1


async def test_known_keys_keep_working_while_the_identity_provider_is_down(
    jwks: Jwks, verifier: JwtVerifier
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.keys = [_jwk(key, "k1", "RS256")]
    assert (await verifier.verify(_token(key, "k1", "RS256"))).user_id == "user-9"
    jwks.failing = True
    assert verifier.jwks is not None
    verifier.jwks._fetched_at -= verifier.jwks.ttl + 1
    assert (await verifier.verify(_token(key, "k1", "RS256"))).user_id == "user-9"
    assert jwks.fetches == 2


@pytest.mark.parametrize("settings_overrides", [{"jwt_jwks_url": "http://127.0.0.1:9/jwks"}])
async def test_an_unreachable_jwks_answers_a_503_problem(client: httpx.AsyncClient) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = _token(key, "k1", "RS256")
    response = await client.get("/v1/balance", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"]
