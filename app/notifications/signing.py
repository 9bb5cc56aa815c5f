"""The `Billing-Signature` scheme of our outbound webhooks (Stripe's, with our secret).

`Billing-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`; a receiver
recomputes the HMAC over the raw bytes it received, compares in constant time, and refuses a
timestamp older than its tolerance (the README shows how)."""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Billing-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The header value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(
    body: bytes,
    header: str | None,
    secret: str,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether `header` signs `body` under `secret` within `tolerance` seconds."""
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(body, secret, timestamp).partition("v1=")[2]
    return any(hmac.compare_digest(expected, c) for c in candidates)
