"""Stripe's webhook signature, checked on the raw body (no database, no Stripe)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from app.errors import InvalidSignature
from app.stripe_gateway import verify_webhook

SECRET = "whsec_test_signature"
NOW = 1_800_000_000
BODY = json.dumps(
    {"id": "evt_1", "object": "event", "type": "charge.refunded", "data": {"object": {}}}
).encode()


def _header(body: bytes, *, at: int = NOW, secret: str = SECRET) -> str:
    digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def test_a_body_signed_with_our_secret_within_the_tolerance_is_the_event() -> None:
    event = verify_webhook(BODY, _header(BODY), SECRET, tolerance=300, now=NOW + 299)
    assert (event["id"], event["type"]) == ("evt_1", "charge.refunded")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        _header(BODY + b" "),  # another body
        _header(BODY, secret="whsec_someone_else"),
        _header(BODY, at=NOW - 301),  # too old
        _header(BODY, at=NOW + 301),  # from the future
        f"t={NOW},v1=not-hex",
        f"t={NOW},v1={'é' * 64}",  # non-ASCII: refused before any comparison
        f"v1={'0' * 64}",  # no timestamp
    ],
)
def test_anything_else_is_an_invalid_signature(header: str | None) -> None:
    with pytest.raises(InvalidSignature):
        verify_webhook(BODY, header, SECRET, tolerance=300, now=NOW)
