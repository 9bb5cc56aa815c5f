"""Low-balance alerts: the settings, and each threshold firing once per crossing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.ids import new_id
from app.ledger import lots
from app.ledger.balance_events import balance_changed
from app.ledger.repository import WalletRow
from app.models.ledger import LotSource, Txn
from app.models.notifications import BalanceAlert, Notification, NotificationSettings
from testing.factories import gateway_debit, paid_order

Headers = Callable[..., dict[str, str]]
USD = 1_000_000


async def _balance_low(
    maker: async_sessionmaker[AsyncSession], user_id: str = "user-1"
) -> list[Any]:
    async with session_scope(maker) as session:
        rows = await session.scalars(
            select(Notification).where(
                Notification.user_id == user_id, Notification.type == "balance.low"
            )
        )
        # In time order; the thresholds one change crossed, highest first.
        ordered = sorted(rows, key=lambda n: (n.created_at, -n.data["threshold_micros"]))
        return [(n.data["threshold"], n.data["available"]) for n in ordered]


async def _move(
    maker: async_sessionmaker[AsyncSession], user_id: str, amount_micros: int
) -> list[int]:
    """A usage debit (negative: the gateway's statement) or an adjustment credit (positive:
    `post()`), each applying the crossing rule in its transaction. Returns the thresholds it
    fired, highest first."""
    async with session_scope(maker) as session:
        if amount_micros < 0:
            await gateway_debit(session, user_id, -amount_micros)
        else:
            await lots.credit(
                session,
                Txn(f"adjustment:{new_id('adj')}", "adjustment"),
                user_id=user_id,
                amount_micros=amount_micros,
                source=LotSource.ADJUSTMENT,
                account="adjustments",
            )
        # What this transaction enqueued (its own rows, not other debits').
        fired = await session.scalars(
            text(
                "SELECT (data->>'threshold_micros')::bigint FROM notifications"
                " WHERE user_id = :user_id AND type = 'balance.low'"
                " AND xmin::text::bigint = txid_current() % 4294967296"
            ),
            {"user_id": user_id},
        )
        return sorted(fired, reverse=True)


async def _set(
    client: httpx.AsyncClient, headers: dict[str, str], *thresholds: str, email: bool = True
) -> httpx.Response:
    return await client.put(
        "/v1/alerts",
        json={"low_balance_thresholds": list(thresholds), "email": email},
        headers=headers,
    )


async def test_settings_read_back_highest_first_and_default_to_none_with_email(
    client: httpx.AsyncClient, user_headers: Headers
) -> None:
    headers = user_headers("user-1")
    assert (await client.get("/v1/alerts", headers=headers)).json() == {
        "low_balance_thresholds": [],
        "email": True,
        "currency": "usd",
    }
    response = await _set(client, headers, "1", "5.5", email=False)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "low_balance_thresholds": ["5.50", "1.00"],
        "email": False,
        "currency": "usd",
    }
    assert (await client.get("/v1/alerts", headers=headers)).json() == response.json()
    assert (await _set(client, headers)).json()["low_balance_thresholds"] == []


@pytest.mark.parametrize(
    "thresholds",
    [["1", "2", "3", "4", "5", "6"], ["5.00", "5"], ["-1"], ["1.001"], ["1e3"], [5]],
)
async def test_invalid_thresholds_are_a_422(
    client: httpx.AsyncClient, user_headers: Headers, thresholds: list[Any]
) -> None:
    response = await client.put(
        "/v1/alerts",
        json={"low_balance_thresholds": thresholds, "email": True},
        headers=user_headers("user-1"),
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


@pytest.mark.parametrize(
    ("path", "field"), [("/v1/alerts", "email"), ("/v1/auto-topup", "enabled")]
)
async def test_a_number_is_not_a_boolean(
    client: httpx.AsyncClient, user_headers: Headers, path: str, field: str
) -> None:
    # make fuzz found it: `"email": 0` was taken as false.
    response = await client.put(path, json={field: 0}, headers=user_headers("user-1"))
    assert response.status_code == 422, response.text
    assert any(e["field"].endswith(field) for e in response.json()["errors"]), response.text


UNSENDABLE_ADDRESSES = [
    "a@x.com, b@y.com",  # two addresses: both would get the user's mail
    "a@x.com;b@y.com",
    "Team <a@x.com>, b@y.com",
    "a@[",  # unparsable: setting the To header raised inside the delivery job
    "a@",
    "ada\u2028@example.com",  # a line separator: the email package refuses the header
    "ada@example.com\u2029",
    "ada@exa\u200bmple.com",
]


@pytest.mark.parametrize("address", UNSENDABLE_ADDRESSES)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/alerts", {"low_balance_thresholds": ["5.00"], "email": True}),
        (
            "/v1/auto-topup",
            {
                "enabled": False,
                "threshold": "5.00",
                "amount": "20.00",
                "payment_method_id": None,
                "monthly_limit": "100.00",
            },
        ),
    ],
)
async def test_an_email_claim_that_is_not_exactly_one_address_is_a_422_and_not_kept(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: async_sessionmaker[AsyncSession],
    path: str,
    body: dict[str, Any],
    address: str,
) -> None:
    response = await client.put(path, json=body, headers=user_headers("user-1", email=address))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert [e["field"] for e in problem["errors"]] == ["token.email"]
    async with session_scope(session_maker) as session:
        assert await session.get(NotificationSettings, "user-1") is None
        assert (await session.scalars(select(BalanceAlert))).all() == []


async def test_each_threshold_fires_once_per_crossing_and_re_arms_on_recovery(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    await paid_order(session_maker, amount_micros=10 * USD)
    await _set(client, user_headers("user-1"), "5.00", "1.00")

    assert await _move(session_maker, "user-1", -4 * USD) == []  # 6.00: above both
    assert await _move(session_maker, "user-1", -2 * USD) == [5 * USD]  # 4.00
    assert await _move(session_maker, "user-1", -1 * USD) == []  # 3.00: fired already
    assert await _move(session_maker, "user-1", -2_500_000) == [1 * USD]  # 0.50
    assert await _move(session_maker, "user-1", 2 * USD) == []  # 2.50: re-arms 1.00 only
    assert await _move(session_maker, "user-1", -2 * USD) == [1 * USD]  # 0.50 again
    assert await _move(session_maker, "user-1", 5 * USD) == []  # 5.50: re-arms both
    assert await _move(session_maker, "user-1", -5_400_000) == [5 * USD, 1 * USD]  # 0.10
    assert await _balance_low(session_maker) == [
        ("5.00", "4.000000"),
        ("1.00", "0.500000"),
        ("1.00", "0.500000"),
        ("5.00", "0.100000"),
        ("1.00", "0.100000"),
    ]


async def test_a_threshold_set_below_the_balance_waits_for_a_recovery(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    await paid_order(session_maker, amount_micros=3 * USD)
    await _set(client, user_headers("user-1"), "5.00")
    assert await _move(session_maker, "user-1", -1 * USD) == []
    assert await _move(session_maker, "user-1", 4 * USD) == []  # 6.00: armed now
    assert await _move(session_maker, "user-1", -2 * USD) == [5 * USD]


async def test_changing_the_thresholds_keeps_the_state_of_those_kept(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    await paid_order(session_maker, amount_micros=10 * USD)
    headers = user_headers("user-1")
    await _set(client, headers, "5.00")
    await _move(session_maker, "user-1", -6 * USD)  # 4.00: fired
    await _set(client, headers, "5.00", "2.00")  # 2.00 is new and armed; 5.00 stays fired
    async with session_scope(session_maker) as session:
        rows = await session.scalars(select(BalanceAlert).order_by(BalanceAlert.threshold_micros))
        assert [(r.threshold_micros, r.armed) for r in rows] == [(2 * USD, True), (5 * USD, False)]
    assert await _move(session_maker, "user-1", -3 * USD) == [2 * USD]


async def test_a_negative_balance_reads_as_such(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    await paid_order(session_maker, amount_micros=1 * USD)
    await _set(client, user_headers("user-1"), "0")
    async with session_scope(session_maker) as session:
        # A capture may take the balance below zero (no covering check).
        wallet = WalletRow("acc_x", "user-1", -1_500_000, 0, watch_micros=0)
        await balance_changed(session, wallet, 1 * USD)
    assert await _balance_low(session_maker) == [("0.00", "-1.500000")]


async def test_concurrent_debits_across_a_threshold_fire_it_once(
    client: httpx.AsyncClient,
    user_headers: Headers,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    await paid_order(session_maker, amount_micros=10 * USD)
    await _set(client, user_headers("user-1"), "5.00", "1.00")

    # 50 debits of 0.20 spend the 10.00 exactly.
    results = await asyncio.gather(*(_move(session_maker, "user-1", -200_000) for _ in range(50)))
    fired = sorted(t for r in results for t in r)
    assert fired == [1 * USD, 5 * USD]
    assert sorted(await _balance_low(session_maker)) == [("1.00", "0.800000"), ("5.00", "4.800000")]
