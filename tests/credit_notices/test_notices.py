"""`credits.expiring` before a lot with a remainder expires (each number of days once per lot,
only the nearest when several are due) and `credits.expired` when it has, with a frozen clock
passed to the job as `now`."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.credit_notices.service import expired_in_sweep
from app.db import session_scope
from app.jobs.credit_notices import send_credit_notices
from app.ledger import lots
from app.models.base import utcnow
from app.models.notifications import Notification
from app.models.promotions import LotNotice
from app.notifications import events
from app.notifications.render import render_email

DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)


async def grant(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    expires_at: datetime | None,
    *,
    user: str = "alice",
    key: str = "g-1",
    amount: str = "25.00",
) -> dict[str, Any]:
    body: dict[str, Any] = {"amount": amount, "reason": "trial credit", "idempotency_key": key}
    if expires_at is not None:
        body["expires_at"] = expires_at.isoformat()
    response = await client.post(f"/v1/admin/users/{user}/grants", json=body, headers=admin_headers)
    assert response.status_code == 201, response.text
    lot: dict[str, Any] = response.json()
    return lot


async def sent(maker: async_sessionmaker[AsyncSession]) -> list[tuple[str, dict[str, Any]]]:
    """The outbox: (type, data) in the order written."""
    async with session_scope(maker) as session:
        rows = (await session.execute(select(Notification).order_by(Notification.id))).scalars()
        return [(row.type, row.data) for row in rows]


async def test_each_warning_goes_out_once_on_its_day_then_the_expiry(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    start = utcnow()
    expires_at = start + 40 * DAY
    lot = await grant(client, admin_headers, expires_at)
    run = send_credit_notices
    assert await run(session_maker, settings, now=start) == 0
    assert await run(session_maker, settings, now=expires_at - 30 * DAY - SECOND) == 0
    assert await run(session_maker, settings, now=expires_at - 30 * DAY) == 1
    assert await run(session_maker, settings, now=expires_at - 30 * DAY + DAY) == 0
    assert await run(session_maker, settings, now=expires_at - 7 * DAY) == 1
    assert await run(session_maker, settings, now=expires_at - 7 * DAY + SECOND) == 0
    assert await run(session_maker, settings, now=expires_at - DAY) == 1
    assert await run(session_maker, settings, now=expires_at - SECOND) == 0
    assert await run(session_maker, settings, now=expires_at) == 1
    assert await run(session_maker, settings, now=expires_at + 2 * DAY) == 0
    outbox = await sent(session_maker)
    assert [(t, d.get("days_before")) for t, d in outbox] == [
        ("credits.expiring", 30),
        ("credits.expiring", 7),
        ("credits.expiring", 1),
        ("credits.expired", None),
    ]
    warning = outbox[0][1]
    assert warning == {
        "lot_id": lot["id"],
        "source": "grant",
        "amount": "25.000000",
        "amount_micros": 25_000_000,
        "expires_at": expires_at.isoformat(),
        "days_before": 30,
        "currency": "usd",
    }
    expired = outbox[3][1]
    assert (expired["amount_micros"], expired["expired_at"]) == (
        25_000_000,
        expires_at.isoformat(),
    )
    async with session_scope(session_maker) as session:
        notices = (await session.execute(select(LotNotice))).scalars().all()
        assert sorted(n.days_before for n in notices) == [0, 1, 7, 30]
        assert all(n.notification_id for n in notices)


async def test_a_job_that_was_down_sends_only_the_nearest_warning(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    start = utcnow()
    expires_at = start + 40 * DAY
    await grant(client, admin_headers, expires_at)
    assert await send_credit_notices(session_maker, settings, now=expires_at - 3 * DAY) == 1
    # The 30-day warning is never sent late, now that the 7-day one went out.
    assert await send_credit_notices(session_maker, settings, now=expires_at - 2 * DAY) == 0
    assert await send_credit_notices(session_maker, settings, now=expires_at - DAY) == 1
    outbox = await sent(session_maker)
    assert [d["days_before"] for _, d in outbox] == [7, 1]


async def test_a_lot_granted_for_less_than_a_warnings_days_skips_that_warning(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    start = utcnow()
    expires_at = start + 5 * DAY
    await grant(client, admin_headers, expires_at)
    for hours in range(0, 5 * 24, 6):
        await send_credit_notices(session_maker, settings, now=start + timedelta(hours=hours))
    assert [d["days_before"] for _, d in await sent(session_maker)] == [1]


async def test_credit_that_never_expires_gets_no_notice(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    await grant(client, admin_headers, None)
    assert await send_credit_notices(session_maker, settings, now=utcnow() + 4000 * DAY) == 0
    assert await sent(session_maker) == []


@pytest.mark.parametrize("settings_overrides", [{"credit_expiry_warning_days": "3"}])
async def test_the_warning_days_are_a_setting(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    assert settings.credit_expiry_warning_days == [3]
    expires_at = utcnow() + 40 * DAY
    await grant(client, admin_headers, expires_at)
    assert await send_credit_notices(session_maker, settings, now=expires_at - 7 * DAY) == 0
    assert await send_credit_notices(session_maker, settings, now=expires_at - 3 * DAY) == 1


async def test_overlapping_runs_send_each_notice_once(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    expires_at = utcnow() + 40 * DAY
    for n in range(20):
        await grant(client, admin_headers, expires_at, user=f"u{n}", key=f"k{n}")
    now = expires_at - 7 * DAY
    counts = await asyncio.gather(
        *(send_credit_notices(session_maker, settings, now=now) for _ in range(4))
    )
    assert sum(counts) == 20
    assert len(await sent(session_maker)) == 20


async def test_the_sweeps_hook_tells_the_expiry_once(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    expires_at = utcnow() + 10 * DAY
    lot = await grant(client, admin_headers, expires_at)
    hook = {
        "lot_id": lot["id"],
        "user_id": "alice",
        "source": "grant",
        "expires_at": expires_at,
        "now": expires_at + SECOND,
    }
    async with session_scope(session_maker) as session:
        assert await expired_in_sweep(session, expired_micros=25_000_000, **hook) is True
        assert await expired_in_sweep(session, expired_micros=25_000_000, **hook) is False
    assert await send_credit_notices(session_maker, settings, now=expires_at + DAY) == 0
    assert [t for t, _ in await sent(session_maker)] == ["credits.expired"]


async def sweep(maker: async_sessionmaker[AsyncSession], lot_id: str, at: datetime) -> int:
    """The expiry sweep of one lot (`app.ledger.lots.expire_lot`, which the `expire_lots`
    job runs): its remainder out under `lot_expiry:<lot id>`, the lot left at 0."""
    async with session_scope(maker) as session:
        return await lots.expire_lot(session, lot_id, at)


async def test_a_lot_swept_before_the_job_ran_is_told_what_the_sweep_took(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    expires_at = utcnow() + 10 * DAY
    lot = await grant(client, admin_headers, expires_at, amount="12.34")
    old = await grant(client, admin_headers, expires_at - 9 * DAY, user="bob", key="g-2")
    assert await sweep(session_maker, lot["id"], expires_at + SECOND) == 12_340_000
    assert await sweep(session_maker, old["id"], expires_at - 9 * DAY + SECOND) == 25_000_000
    # A week after its expiry a swept lot is not told any more: alice's 8 days late, not sent.
    assert await send_credit_notices(session_maker, settings, now=expires_at + 8 * DAY) == 0
    # Nor bob's, 10 days late, when alice's is sent.
    assert await send_credit_notices(session_maker, settings, now=expires_at + DAY) == 1
    assert await send_credit_notices(session_maker, settings, now=expires_at + DAY) == 0
    [(kind, data)] = await sent(session_maker)
    assert (kind, data["lot_id"], data["amount_micros"]) == (
        "credits.expired",
        lot["id"],
        12_340_000,
    )


async def test_a_lot_that_expired_empty_is_recorded_and_not_told(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    expires_at = utcnow() + 10 * DAY
    lot = await grant(client, admin_headers, expires_at)
    spent = await client.post(
        "/v1/internal/usage",
        json={"user_id": "alice", "request_id": "all-of-it", "amount_micros": 25_000_000},
        headers=gateway_headers,
    )
    assert spent.status_code == 201, spent.text
    assert await sweep(session_maker, lot["id"], expires_at + SECOND) == 0
    assert await send_credit_notices(session_maker, settings, now=expires_at + DAY) == 0
    assert await sent(session_maker) == []
    async with session_scope(session_maker) as session:
        notices = (await session.execute(select(LotNotice))).scalars().all()
        # Swept with nothing in it: recorded unsent, so no run looks at it again.
        assert [(n.days_before, n.notification_id) for n in notices] == [(0, None)]


def test_the_emails_say_the_amount_and_the_date() -> None:
    at = datetime.fromisoformat("2027-03-31T12:00:00+00:00")
    subject, body = render_email(
        *events.credit_notice(
            lot_id="lot_1",
            source="promo_code",
            amount_micros=7_500_000,
            expires_at=at,
            days_before=7,
        )
    )
    assert subject == "$7.50 of your ToRouter promo code credit expires soon"
    assert "expires on 2027-03-31 12:00 UTC, in 7 days." in body
    subject, body = render_email(
        *events.credit_notice(
            lot_id="lot_1",
            source="purchase",
            amount_micros=1_250_000,
            expires_at=at,
            days_before=None,
        )
    )
    assert subject == "$1.25 of your ToRouter credit expired"
    assert "expired unspent on 2027-03-31 12:00 UTC" in body
