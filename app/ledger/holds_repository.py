"""All SQL of holds (reserve, capture, release, expiry) on the ORM path."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    String,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import insert_for
from app.ledger.repository import WALLET_COLUMNS, WalletRow, wallet_row
from app.models.base import UTCDateTime
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


async def insert_hold(session: AsyncSession, request: HoldRequest, now: datetime) -> HoldRow | None:
    """Insert an active hold on the user's wallet; None when the hold id exists already or the
    user has no wallet (the caller tells the two apart)."""
    wallet = select(
        literal(request.hold_id, String),
        Account.id,
        literal(request.user_id, String),
        literal(request.amount_micros, BigInteger),
        literal("active", String),
        literal(request.request_hash, String),
        literal(request.details, JSON) if request.details is not None else null(),
        literal(request.expires_at(now), UTCDateTime()),
        literal(now, UTCDateTime()),
    ).where(Account.user_id == request.user_id)
    stmt = (
        insert_for(session)(Hold)
        .from_select(
            [
                "id",
                "account_id",
                "user_id",
                "amount_micros",
                "status",
                "request_hash",
                "details",
                "expires_at",
                "created_at",
            ],
            wallet,
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(*_HOLD_COLUMNS)
    )
    row = (await session.execute(stmt)).first()
    return _hold(row) if row is not None else None


async def get_hold(session: AsyncSession, hold_id: str) -> HoldRow | None:
    """A hold by id."""
    row = (await session.execute(select(*_HOLD_COLUMNS).where(Hold.id == hold_id))).first()
    return _hold(row) if row is not None else None


async def resolve_hold(
    session: AsyncSession,
    hold_id: str,
    *,
    status: str,
    captured_micros: int | None,
    resolution_hash: str,
    now: datetime,
    max_hold_multiple: float = math.inf,
) -> HoldRow | None:
    """Move an active hold to `status` in one conditional UPDATE (which also locks it); None
    when the hold does not exist, is no longer active, or `captured_micros` is more than
    `max_hold_multiple` times its amount."""
    bound = (
        [Hold.amount_micros * literal(max_hold_multiple, Float) >= captured_micros]
        if captured_micros is not None and math.isfinite(max_hold_multiple)
        else []
    )
    stmt = (
        update(Hold)
        .where(Hold.id == hold_id, Hold.status == "active", *bound)
        .values(
            status=status,
            captured_micros=captured_micros,
            resolution_hash=resolution_hash,
            resolved_at=now,
        )
        .returning(*_HOLD_COLUMNS)
    )
    row = (await session.execute(stmt)).first()
    return _hold(row) if row is not None else None


async def expire_due_holds(session: AsyncSession, now: datetime, limit: int) -> list[HoldRow]:
    """Mark up to `limit` active holds whose TTL has passed as expired. On PostgreSQL the rows
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


async def hold_on_wallet(
    session: AsyncSession, user_id: str, amount_micros: int
) -> WalletRow | None:
    """Add `amount_micros` to the wallet's held amount only if its available balance covers it,
    in one conditional UPDATE; None when it does not (or there is no wallet)."""
    stmt = (
        update(Account)
        .where(
            Account.user_id == user_id,
            Account.balance_micros - Account.held_micros >= amount_micros,
        )
        .values(held_micros=Account.held_micros + amount_micros)
        .returning(*WALLET_COLUMNS)
    )
    row = (await session.execute(stmt)).first()
    return wallet_row(row) if row is not None else None


async def release_held(session: AsyncSession, user_id: str, amount_micros: int) -> WalletRow:
    """Take `amount_micros` off the wallet's held amount (a hold released or expired)."""
    stmt = (
        update(Account)
        .where(Account.user_id == user_id)
        .values(held_micros=Account.held_micros - amount_micros)
        .returning(*WALLET_COLUMNS)
    )
    return wallet_row((await session.execute(stmt)).one())
