"""`GET/PUT /v1/auto-topup`: validation, and that only `enabled: true` enables or lifts a pause."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auto_topup import service
from app.db import session_scope
from app.models.base import utcnow
from app.models.notifications import NotificationSettings
from app.models.payment_methods import AutoTopup, AutoTopupSettings
from testing.factories import saved_card

Headers = Callable[..., dict[str, str]]


def _body(card_id: str | None, **changes: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "threshold": "5.00",
        "amount": "20.00",
        "payment_method_id": card_id,
        "monthly_limit": "100.00",
    } | changes


async def test_never_set_reads_as_disabled(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    response = await client.get("/v1/auto-topup", headers=user_headers("user-1"))
    assert response.status_code == 200
    assert response.json() == {
        "enabled": False,
        "threshold": None,
        "amount": None,
        "payment_method_id": None,
        "monthly_limit": None,
        "currency": "usd",
        "status": "disabled",
        "paused_reason": None,
        "last_attempt_at": None,
        "next_attempt_at": None,
        "spent_this_month": "0.00",
    }


async def test_enabling_with_a_saved_card_makes_it_active(
    app: Any,
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    card = await saved_card(session_maker)
    response = await client.put(
        "/v1/auto-topup", json=_body(card.id, amount="20"), headers=user_headers("user-1")
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "active"
    assert (body["threshold"], body["amount"], body["monthly_limit"]) == ("5.00", "20.00", "100.00")
    assert body["payment_method_id"] == card.id
    assert (await client.get("/v1/auto-topup", headers=user_headers("user-1"))).json() == body
    async with session_scope(session_maker) as session:
        prefs = await session.get(NotificationSettings, "user-1")
        assert prefs is not None
        assert prefs.email == "user-1@example.com"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": "0.99"}, "amount"),
        ({"amount": "10000.01"}, "amount"),
        ({"amount": "20.001"}, "amount"),
        ({"threshold": "-1.00"}, "threshold"),
        ({"monthly_limit": "19.99"}, "monthly_limit"),
        ({"monthly_limit": None}, "monthly_limit"),
        ({"payment_method_id": None}, "payment_method_id"),
        ({"payment_method_id": "pm_not_mine"}, "payment_method_id"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_invalid_settings_are_a_422_naming_the_field(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: async_sessionmaker[AsyncSession],
    changes: dict[str, Any],
    field: str,
) -> None:
    card = await saved_card(session_maker)
    body = _body(card.id) | changes
    if changes.get("monthly_limit", "") is None:
        del body["monthly_limit"]
    response = await client.put("/v1/auto-topup", json=body, headers=user_headers("user-1"))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert field in {e["field"] for e in response.json()["errors"]}


async def test_another_users_or_a_removed_card_cannot_be_used(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    theirs = await saved_card(session_maker, user_id="user-2")
    removed = await saved_card(session_maker)
    async with session_scope(session_maker) as session:
        from app.models.payment_methods import PaymentMethod

        row = await session.get(PaymentMethod, removed.id)
        assert row is not None
        row.detached_at = utcnow()
    for card_id in (theirs.id, removed.id):
        response = await client.put(
            "/v1/auto-topup", json=_body(card_id), headers=user_headers("user-1")
        )
        assert response.status_code == 422


async def test_only_a_put_with_enabled_true_lifts_a_pause(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    card = await saved_card(session_maker)
    headers = user_headers("user-1")
    await client.put("/v1/auto-topup", json=_body(card.id), headers=headers)
    async with session_scope(session_maker) as session:
        assert await service.pause(session, "user-1", "card_declined")
        row = await session.get(AutoTopupSettings, "user-1")
        assert row is not None
        row.soft_declines = 3
        # A second pause of a paused one changes nothing (and notifies nothing).
        assert not await service.pause(session, "user-1", "authentication_required")

    paused = (await client.get("/v1/auto-topup", headers=headers)).json()
    assert (paused["status"], paused["paused_reason"]) == ("paused", "card_declined")
    assert paused["next_attempt_at"] is None

    disabled = await client.put(
        "/v1/auto-topup", json=_body(card.id, enabled=False), headers=headers
    )
    assert (disabled.json()["status"], disabled.json()["enabled"]) == ("disabled", False)
    assert disabled.json()["paused_reason"] is None

    enabled = await client.put("/v1/auto-topup", json=_body(card.id), headers=headers)
    assert (enabled.json()["status"], enabled.json()["paused_reason"]) == ("active", None)
    async with session_scope(session_maker) as session:
        row = await session.get(AutoTopupSettings, "user-1")
        assert row is not None
        assert row.soft_declines == 0


async def test_disabling_needs_no_card(client: httpx.AsyncClient, user_headers: Headers) -> None:
    response = await client.put(
        "/v1/auto-topup", json=_body(None, enabled=False), headers=user_headers("user-1")
    )
    assert response.status_code == 200
    assert response.json()["status"] == "disabled"


async def test_spent_this_month_counts_succeeded_attempts_of_this_month(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    card = await saved_card(session_maker)
    await client.put("/v1/auto-topup", json=_body(card.id), headers=user_headers("user-1"))
    now = utcnow()
    async with session_scope(session_maker) as session:
        for i, (status, created) in enumerate(
            [
                ("succeeded", now),
                ("succeeded", now - timedelta(days=40)),
                ("failed", now),
                ("succeeded", now),
            ]
        ):
            session.add(
                AutoTopup(
                    id=f"atu_{i}",
                    user_id="user-1",
                    status=status,
                    amount_micros=20_000_000,
                    payment_method_id=card.id,
                    created_at=created,
                )
            )
    body = (await client.get("/v1/auto-topup", headers=user_headers("user-1"))).json()
    # 40 days ago is always an earlier calendar month.
    assert body["spent_this_month"] == "40.00"


async def test_one_attempt_in_flight_per_user(
    app: Any, session_maker: async_sessionmaker[AsyncSession]
) -> None:
    from sqlalchemy.exc import IntegrityError

    async with session_scope(session_maker) as session:
        session.add(
            AutoTopup(id="atu_a", user_id="user-1", amount_micros=1, payment_method_id="pm_1")
        )
    with pytest.raises(IntegrityError):
        async with session_scope(session_maker) as session:
            session.add(
                AutoTopup(
                    id="atu_b",
                    user_id="user-1",
                    status="processing",
                    amount_micros=1,
                    payment_method_id="pm_1",
                )
            )
    async with session_scope(session_maker) as session:
        session.add(
            AutoTopup(id="atu_c", user_id="user-2", amount_micros=1, payment_method_id="pm_1")
        )
        row = await session.get(AutoTopup, "atu_a")
        assert row is not None
        row.status = "succeeded"
    async with session_scope(session_maker) as session:
        session.add(
            AutoTopup(id="atu_d", user_id="user-1", amount_micros=1, payment_method_id="pm_1")
        )


async def _watch(maker: async_sessionmaker[AsyncSession], user_id: str) -> int | None:
    from app.models.ledger import Account

    async with session_scope(maker) as session:
        wallet = await session.scalar(select(Account).where(Account.user_id == user_id))
        assert wallet is not None
        return wallet.watch_micros


async def test_the_wallets_watch_follows_its_alerts_and_auto_topup(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    """The gateway's statements look alerts and auto top-up up only below the wallet's watch:
    it must be the highest threshold that could fire, or NULL when nothing can."""
    headers = user_headers("user-1")
    card = await saved_card(session_maker, user_id="user-1")
    alerts = {"low_balance_thresholds": ["3.00", "1.00"], "email": False}
    assert (await client.put("/v1/alerts", json=alerts, headers=headers)).status_code == 200
    assert await _watch(session_maker, "user-1") == 3_000_000  # the wallet exists already
    put = await client.put("/v1/auto-topup", json=_body(card.id), headers=headers)
    assert put.status_code == 200, put.text
    assert await _watch(session_maker, "user-1") == 5_000_000
    off = await client.put("/v1/auto-topup", json=_body(card.id, enabled=False), headers=headers)
    assert off.status_code == 200, off.text
    assert await _watch(session_maker, "user-1") == 3_000_000
    none = {"low_balance_thresholds": [], "email": False}
    assert (await client.put("/v1/alerts", json=none, headers=headers)).status_code == 200
    assert await _watch(session_maker, "user-1") is None
