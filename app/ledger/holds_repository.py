"""Holds as the gateway asks for them and as statements return them, and the SQL of their
expiry (reserve, capture and release are the gateway's statements: `app/usage/repository.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.ledger.repository import WALLET_COLUMNS, WalletRow, wallet_row
from app.models.ledger import Account, Hold

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


_HOLD_COLUMNS = (
    Hold.id,
    Hold.user_id,
    Hold.amount_micros,
    Hold.status,
    Hold.captured_micros,
    Hold.request_hash,
    Hold.resolution_hash,
    Hold.expires_at,
    Hold.created_at,
    Hold.resolved_at,
)


def _hold(row: Any) -> HoldRow:
    return HoldRow(*row)


async def expire_due_holds(session: AsyncSession, now: datetime, limit: int) -> list[HoldRow]:
    """Mark up to `limit` active holds whose TTL has passed as expired. The rows
    are taken with FOR UPDATE SKIP LOCKED, so concurrent runs (other instances) split the work
    and a hold being captured right now is left to its capture."""
    due = (
        select(Hold.id)
        .where(Hold.status == "active", Hold.expires_at <= now)
        .order_by(Hold.expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(Hold)
        .where(Hold.id.in_(due.scalar_subquery()), Hold.status == "active")
        .values(status="expired", resolved_at=now)
        .returning(*_HOLD_COLUMNS)
    )
    return [_hold(row) for row in (await session.execute(stmt)).all()]


async def release_held(session: AsyncSession, user_id: str, amount_micros: int) -> WalletRow:
    """Take `amount_micros` off the wallet's held amount (a hold released or expired)."""
    stmt = (
        update(Account)
        .where(Account.user_id == user_id)
        .values(held_micros=Account.held_micros - amount_micros)
        .returning(*WALLET_COLUMNS)
    )
    return wallet_row((await session.execute(stmt)).one())
