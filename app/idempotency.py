"""Request fingerprints for idempotency keys: the same key with a different body is a 409."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# One encoder, not one per call: `json.dumps` with non-default options builds a new encoder each
# time, which is most of its cost for a small body (a batch hashes a thousand).
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def hash_request(body: dict[str, Any]) -> str:
    """SHA-256 of a request body's canonical JSON (sorted keys, no whitespace): tells a replay
    of an idempotency key from its reuse with a different request."""
    return hashlib.sha256(_CANONICAL_JSON.encode(body).encode()).hexdigest()
