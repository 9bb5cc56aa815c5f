"""Time-ordered identifiers (ULID layout: 48-bit milliseconds, 80 random bits, Crockford base32),
so that ordering by id is ordering by creation, which keyset pagination relies on."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid() -> str:
    """A 26-character ULID."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, index = divmod(value, 32)
        chars.append(_ALPHABET[index])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """A prefixed id such as `ord_01J…`."""
    return f"{prefix}_{ulid()}"
