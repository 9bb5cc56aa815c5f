"""HTTP helpers of the spend-limit tests, and a clock the tests move."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models.ledger import Hold
from app.models.limits import SpendLimit
from app.models.usage import UsageRecord


def at(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    microsecond: int = 0,
) -> datetime:
    """A moment in UTC."""
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


class Clock:
    """What `app.state.clock` answers: a moment the test sets."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def set_limit(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    limit: str,
    period: str,
    key: str | None = None,
) -> dict[str, Any]:
    path = f"/v1/spend-limits/keys/{key}" if key else "/v1/spend-limits/account"
    response = await client.put(path, json={"limit": limit, "period": period}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def reserve(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    user_id: str,
    amount_micros: int,
    *,
    hold_id: str | None = None,
    **extra: Any,
) -> httpx.Response:
    return await client.post(
        "/v1/internal/holds",
        json={
            "user_id": user_id,
            "hold_id": hold_id or uuid.uuid4().hex,
            "amount_micros": amount_micros,
            **extra,
        },
        headers=gateway_headers,
    )


async def capture(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], hold_id: str, amount_micros: int
) -> httpx.Response:
    return await client.post(
        f"/v1/internal/holds/{hold_id}/capture",
        json={"amount_micros": amount_micros},
        headers=gateway_headers,
    )


async def counter(
    maker: async_sessionmaker[AsyncSession], user_id: str, scope: str
) -> tuple[datetime, int]:
    """A limit's window and what it counted there."""
    async with maker() as session:
        row = (
            await session.execute(
                select(SpendLimit.window_start, SpendLimit.spent_micros).where(
                    SpendLimit.user_id == user_id, SpendLimit.scope == scope
                )
            )
        ).one()
    return row[0], row[1]


async def recounted(
    maker: async_sessionmaker[AsyncSession], user_id: str, since: datetime, key: str | None = None
) -> int:
    """What the usage records and active holds say was spent since `since` (the counter's
    figure when no hold crossed a window)."""
    async with maker() as session:
        used = select(func.coalesce(func.sum(UsageRecord.amount_micros), 0)).where(
            UsageRecord.user_id == user_id, UsageRecord.created_at >= since
        )
        held = select(func.coalesce(func.sum(Hold.amount_micros), 0)).where(
            Hold.user_id == user_id, Hold.status == "active", Hold.created_at >= since
        )
        if key is not None:
            used = used.where(UsageRecord.api_key_id == key)
            held = held.where(Hold.api_key_id == key)
        return int((await session.execute(used)).scalar_one()) + int(
            (await session.execute(held)).scalar_one()
        )
