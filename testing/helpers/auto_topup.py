"""The auto top-up tests' steps (save a card with a top-up, enable auto top-up, spend through
the gateway, run the charging job) and what they read back (attempts, auto orders, top-up
postings, notifications, settings)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.auto_topup.charging import charge_auto_topups
from app.db import session_scope
from app.models.ledger import LedgerTransaction
from app.models.notifications import Notification
from app.models.orders import Order
from app.models.payment_methods import AutoTopup, AutoTopupSettings
from testing.helpers.ledger import debit
from testing.helpers.purchase import pay
from testing.stripe_peer import StripePeer

Maker = async_sessionmaker[AsyncSession]
USER = "user-1"


async def notification_types(
    maker: async_sessionmaker[AsyncSession], user_id: str = "user-1"
) -> list[str]:
    """The types of the user's notifications, oldest first."""
    async with session_scope(maker) as session:
        rows = await session.scalars(
            select(Notification.type)
            .where(Notification.user_id == user_id)
            .order_by(Notification.created_at, Notification.id)
        )
        return list(rows)


async def auto_topup_settings(
    maker: async_sessionmaker[AsyncSession], user_id: str = "user-1"
) -> AutoTopupSettings:
    async with session_scope(maker) as session:
        row = await session.get(AutoTopupSettings, user_id)
        assert row is not None
        return row


async def save_card(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    maker: Maker,
    peer: StripePeer,
    *,
    mode: str = "elements",
    amount: str = "20.00",
) -> str:
    """A top-up with `save_card: true`, paid at the peer and credited by the result page;
    returns the saved card's id as `GET /v1/payment-methods` lists it."""
    response = await client.post(
        "/v1/purchase", json={"amount": amount, "mode": mode, "save_card": True}, headers=headers
    )
    assert response.status_code == 201, response.text
    order_id = response.json()["order"]["id"]
    paid = await pay(peer, maker, order_id)
    assert paid["outcome"] == "succeeded", paid
    assert paid["payment_intent"]["setup_future_usage"] == "off_session"
    if mode == "checkout":
        params = dict(httpx.URL(paid["redirect_url"]).params)
    else:
        params = {"payment_intent": paid["payment_intent"]["id"]}
    result = await client.get("/v1/payments/result", params=params, headers=headers)
    assert result.status_code == 200, result.text
    assert result.json()["order"]["status"] == "paid"
    cards = (await client.get("/v1/payment-methods", headers=headers)).json()["data"]
    assert cards, "the card was not saved"
    card_id: str = cards[0]["id"]  # newest first
    return card_id


async def enable(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    card_id: str,
    *,
    threshold: str = "10.00",
    amount: str = "25.00",
    monthly_limit: str = "100.00",
) -> dict[str, Any]:
    response = await client.put(
        "/v1/auto-topup",
        json={
            "enabled": True,
            "threshold": threshold,
            "amount": amount,
            "payment_method_id": card_id,
            "monthly_limit": monthly_limit,
        },
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def spend(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], amount_micros: int
) -> None:
    response = await debit(client, gateway_headers, USER, amount_micros)
    assert response.status_code in (200, 201), response.text


async def attempts(maker: Maker) -> list[AutoTopup]:
    async with session_scope(maker) as session:
        rows = await session.scalars(select(AutoTopup).order_by(AutoTopup.created_at))
        return list(rows)


async def auto_orders(maker: Maker) -> list[Order]:
    async with session_scope(maker) as session:
        rows = await session.scalars(
            select(Order).where(Order.kind == "auto").order_by(Order.created_at)
        )
        return list(rows)


async def topup_postings(maker: Maker) -> int:
    async with session_scope(maker) as session:
        count = await session.scalar(
            select(func.count())
            .select_from(LedgerTransaction)
            .where(LedgerTransaction.kind == "topup")
        )
        return int(count or 0)


async def available(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    value: str = (await client.get("/v1/balance", headers=headers)).json()["available"]
    return value


def job(app: Any, now: datetime | None = None) -> Any:
    return charge_auto_topups(
        app.state.session_maker, app.state.stripe, app.state.settings, now=now
    )
