"""Time-ordered identifiers (ULID layout: 48-bit milliseconds, 80 random bits, Crockford base32),
so that ordering by id is ordering by creation, which keyset pagination relies on. Within one
process the ids are strictly increasing, also for several made in the same millisecond (the ULID
spec's monotonic mode: the next is the last plus one); across processes, ids of one millisecond
sort in no particular order."""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters per 10 bits: 13 lookups instead of 26 divisions (the gateway's batches draw a
# thousand ids per request).
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_SHIFTS = range(120, -10, -10)


def encode_ulid(value: int) -> str:
    """The 26-character Crockford base32 form of a 128-bit value (2 leading zero bits)."""
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 0x3FF] for shift in _SHIFTS])


_last = 0
_lock = threading.Lock()


def ulid() -> str:
    """A 26-character ULID, greater than any this process made before."""
    global _last
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    with _lock:
        # Same millisecond with a smaller random part (or a clock stepped back): the next one.
        if value <= _last:
            value = _last + 1
        _last = value
    return encode_ulid(value)


def new_id(prefix: str) -> str:
    """A prefixed id such as `ord_01J…`."""
    return f"{prefix}_{ulid()}"
