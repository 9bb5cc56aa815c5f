"""Holds as the gateway asks for them and as its statements return them (reserve, capture,
release and expiry are those statements: `app/usage/repository.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

# Holds. Lock order everywhere: the hold row first, then the wallet row, so reserve, capture,
# release and the expiry job cannot deadlock one another.


@dataclass(frozen=True, slots=True)
class HoldRow:
    """A hold as a statement returned it."""

    id: str
    user_id: str
    amount_micros: int
    status: str
    captured_micros: int | None
    request_hash: str
    resolution_hash: str | None
    expires_at: datetime
    created_at: datetime
    resolved_at: datetime | None


class HoldRequest(NamedTuple):
    """A reserve as the gateway asked for it, built once by the service and passed down to the
    store and its statement (a tuple, like `UsageDebit`: the gateway builds thousands)."""

    user_id: str
    hold_id: str
    amount_micros: int
    ttl_seconds: int
    request_hash: str
    details: dict[str, Any] | None = None
    api_key_id: str | None = None
    """The gateway's id of the API key that reserves: its key's spend limit applies too."""

    def expires_at(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.ttl_seconds)


class HoldCapture(NamedTuple):
    """A capture as the gateway asked for it: the actual amount and the usage it paid for."""

    hold_id: str
    amount_micros: int
    resolution_hash: str
    details: dict[str, Any] | None = None
    max_hold_multiple: float = math.inf
    """The capture may charge at most this multiple of the hold's amount
    (`BILLING_CAPTURE_MAX_HOLD_MULTIPLE`); past it nothing is applied and the hold stays active."""
