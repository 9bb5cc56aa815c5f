"""Request fingerprints for idempotency keys: the same key with a different body is a 409."""

from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring
from typing import Any

# One encoder, not one per call: `json.dumps` with non-default options builds a new encoder each
# time, which is most of its cost for a small body (a batch hashes a thousand).
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def hash_request(body: dict[str, Any]) -> str:
    """SHA-256 of a request body's canonical JSON (sorted keys, no whitespace): tells a replay
    of an idempotency key from its reuse with a different request."""
    return hashlib.sha256(_CANONICAL_JSON.encode(body).encode()).hexdigest()


def hash_flat_request(body: dict[str, str | int], within: str | None = None) -> str:
    """`hash_request(body)` for a flat body of strings and ints (no bool, no float, no null):
    the same canonical JSON written directly, each string escaped by the encoder's own function,
    each int as the encoder writes it, at a third of the cost (a batch hashes a thousand).
    `within`: `hash_request({within: body})`, the body nested under that one key (a capture's
    resolution hash)."""
    fields = []
    for key in sorted(body):
        value = body[key]
        text = encode_basestring(value) if type(value) is str else int.__repr__(value)
        fields.append(f"{encode_basestring(key)}:{text}")
    canonical = "{" + ",".join(fields) + "}"
    if within is not None:
        canonical = "{" + encode_basestring(within) + ":" + canonical + "}"
    return hashlib.sha256(canonical.encode()).hexdigest()
