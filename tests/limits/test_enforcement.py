"""Spend limits as the gateway meets them: a debit or hold a limit does not
leave room for is a 402 `spend_limit_exceeded` that writes nothing; holds count while active;
captures settle in the hold's window; windows reset on UTC calendar boundaries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.jobs.holds import expire_holds
from app.models.ledger import LedgerTransaction
from app.models.usage import UsageRecord
from testing.helpers.ledger import debit, deposit, gateway_balance
from testing.helpers.limits import Clock, at, capture, counter, recounted, reserve, set_limit

USER = "limited-user"


@pytest.fixture
def clock(app: Any) -> Clock:
    clock = Clock(at(2026, 11, 27, 12))
    app.state.clock = clock
    return clock


@pytest.fixture
async def funded(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    await deposit(client, admin_headers, USER, 100_000_000)


@pytest.fixture
def me(user_headers: Callable[..., dict[str, str]]) -> dict[str, str]:
    return user_headers(USER)


pytestmark = pytest.mark.usefixtures("funded", "clock")


async def test_a_key_limit_refuses_the_debit_that_would_pass_it_and_writes_nothing(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    me: dict[str, str],
    session_maker: Any,
) -> None:
    await set_limit(client, me, "1.00", "day", key="k1")
    first = await debit(client, gateway_headers, USER, 600_000, api_key_id="k1", model="m")
    assert first.status_code == 201, first.text
    assert first.json()["limit_remaining_micros"] == 400_000
    refused = await debit(
        client, gateway_headers, USER, 400_001, api_key_id="k1", request_id="over"
    )
    assert refused.status_code == 402
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["code"] == "spend_limit_exceeded"
    assert problem["scope"] == "key:k1"
    assert problem["limit"] == "1.000000"
    assert problem["spent"] == "0.600000"
    assert problem["resets_at"] == "2026-11-28T00:00:00Z"
    # Nothing written: the balance, the ledger and the records are as before the refusal.
    assert (await gateway_balance(client, gateway_headers, USER))["balance_micros"] == 99_400_000
    async with session_maker() as session:
        assert (
            await session.execute(
                select(func.count()).where(LedgerTransaction.reference == "usage:over")
            )
        ).scalar_one() == 0
        assert (
            await session.execute(select(func.count()).select_from(UsageRecord))
        ).scalar_one() == 1
    # What fits still goes through, exactly to the limit; another key and no key are free.
    exact = await debit(client, gateway_headers, USER, 400_000, api_key_id="k1")
    assert exact.status_code == 201
    assert exact.json()["limit_remaining_micros"] == 0
    assert (
        await debit(client, gateway_headers, USER, 5_000_000, api_key_id="k2")
    ).status_code == 201
    unlimited = await debit(client, gateway_headers, USER, 5_000_000)
    assert unlimited.status_code == 201
    assert unlimited.json()["limit_remaining_micros"] is None
    assert await counter(session_maker, USER, "key:k1") == (at(2026, 11, 27), 1_000_000)


async def test_the_account_limit_covers_every_key_and_the_tightest_limit_is_reported(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], me: dict[str, str]
) -> None:
    await set_limit(client, me, "2.00", "month")
    await set_limit(client, me, "1.50", "day", key="k1")
    response = await debit(client, gateway_headers, USER, 1_000_000, api_key_id="k1")
    # The key leaves 0.50, the account 1.00: the key's is the tighter.
    assert response.json()["limit_remaining_micros"] == 500_000
    response = await debit(client, gateway_headers, USER, 800_000, api_key_id="k2")
    assert response.json()["limit_remaining_micros"] == 200_000
    refused = await debit(client, gateway_headers, USER, 300_000)
    assert refused.status_code == 402
    assert refused.json()["scope"] == "account"
    assert refused.json()["resets_at"] == "2026-12-01T00:00:00Z"


async def test_a_replay_answers_the_original_even_when_the_limit_is_now_spent(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], me: dict[str, str]
) -> None:
    await set_limit(client, me, "1.00", "total")
    first = await debit(client, gateway_headers, USER, 1_000_000, request_id="r1")
    assert first.status_code == 201
    again = await debit(client, gateway_headers, USER, 1_000_000, request_id="r1")
    assert again.status_code == 200
    assert again.json()["replayed"] is True
    refused = await debit(client, gateway_headers, USER, 1)
    assert refused.status_code == 402
    assert refused.json()["resets_at"] is None


async def test_holds_count_while_active_and_capture_settles_the_difference(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    me: dict[str, str],
    session_maker: Any,
) -> None:
    await set_limit(client, me, "1.00", "day", key="k1")
    held = await reserve(client, gateway_headers, USER, 700_000, hold_id="h1", api_key_id="k1")
    assert held.status_code == 201, held.text
    assert held.json()["limit_remaining_micros"] == 300_000
    assert (
        await reserve(client, gateway_headers, USER, 300_001, api_key_id="k1")
    ).status_code == 402
    assert (await debit(client, gateway_headers, USER, 300_001, api_key_id="k1")).status_code == 402
    # Capturing less gives the rest back.
    captured = await capture(client, gateway_headers, "h1", 200_000)
    assert captured.status_code == 200
    assert captured.json()["limit_remaining_micros"] == 800_000
    assert await counter(session_maker, USER, "key:k1") == (at(2026, 11, 27), 200_000)
    # A release gives the whole hold back.
    await reserve(client, gateway_headers, USER, 800_000, hold_id="h2", api_key_id="k1")
    released = await client.post("/v1/internal/holds/h2/release", headers=gateway_headers)
    assert released.status_code == 200
    assert released.json()["limit_remaining_micros"] == 800_000
    assert await counter(session_maker, USER, "key:k1") == (at(2026, 11, 27), 200_000)
    assert await recounted(session_maker, USER, at(2026, 11, 27), "k1") == 200_000


async def test_a_capture_above_its_hold_is_charged_in_full_and_blocks_what_follows(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    me: dict[str, str],
    session_maker: Any,
) -> None:
    await set_limit(client, me, "1.00", "day")
    await reserve(client, gateway_headers, USER, 900_000, hold_id="h1")
    captured = await capture(client, gateway_headers, "h1", 1_300_000)
    assert captured.status_code == 200
    assert captured.json()["limit_remaining_micros"] == 0
    assert await counter(session_maker, USER, "account") == (at(2026, 11, 27), 1_300_000)
    refused = await debit(client, gateway_headers, USER, 1)
    assert refused.status_code == 402
    assert refused.json()["spent"] == "1.300000"
    assert (await reserve(client, gateway_headers, USER, 1)).status_code == 402
    listed = (await client.get("/v1/spend-limits", headers=me)).json()["data"]
    assert listed[0]["spent"] == "1.300000"
    assert listed[0]["remaining"] == "0.000000"


async def test_expired_holds_give_their_amount_back(
    app: Any,
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    me: dict[str, str],
    session_maker: Any,
    clock: Clock,
) -> None:
    await set_limit(client, me, "1.00", "week", key="k1")
    response = await reserve(
        client, gateway_headers, USER, 1_000_000, api_key_id="k1", ttl_seconds=60
    )
    assert response.status_code == 201
    assert (await debit(client, gateway_headers, USER, 1, api_key_id="k1")).status_code == 402
    expired = await expire_holds(app.state.usage_store, now=clock.now + timedelta(minutes=5))
    assert expired == 1
    assert await counter(session_maker, USER, "key:k1") == (at(2026, 11, 23), 0)
    assert (
        await debit(client, gateway_headers, USER, 1_000_000, api_key_id="k1")
    ).status_code == 201


async def test_a_batch_refuses_the_events_a_limit_does_not_leave_room_for(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    me: dict[str, str],
    session_maker: Any,
) -> None:
    await set_limit(client, me, "1.00", "day", key="k1")
    events = [
        {"user_id": USER, "request_id": f"b{i}", "amount_micros": 300_000, "api_key_id": "k1"}
        for i in range(4)
    ] + [{"user_id": USER, "request_id": "free", "amount_micros": 300_000}]
    response = await client.post(
        "/v1/internal/usage/batch", json={"events": events}, headers=gateway_headers
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["applied"] * 3 + ["spend_limit_exceeded", "applied"]
    assert [r["limit_remaining_micros"] for r in results] == [
        700_000,
        400_000,
        100_000,
        100_000,
        None,
    ]
    assert results[3]["scope"] == "key:k1"
    assert await counter(session_maker, USER, "key:k1") == (at(2026, 11, 27), 900_000)
    async with session_maker() as session:
        records = (
            await session.execute(select(func.count()).select_from(UsageRecord))
        ).scalar_one()
    assert records == 4


@pytest.mark.parametrize(
    ("period", "last", "first"),
    [
        ("day", at(2026, 11, 27, 23, 59, 59, 999999), at(2026, 11, 28)),
        ("week", at(2026, 11, 29, 23, 59, 59, 999999), at(2026, 11, 30)),  # Sunday → Monday
        ("month", at(2027, 1, 31, 23, 59, 59, 999999), at(2027, 2, 1)),
        ("month", at(2028, 2, 29, 23, 59, 59, 999999), at(2028, 3, 1)),  # a leap day
        ("day", at(2028, 2, 28, 23, 59, 59, 999999), at(2028, 2, 29)),  # into a leap day
    ],
)
async def test_a_window_resets_at_its_utc_calendar_boundary_and_not_a_moment_before(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    me: dict[str, str],
    clock: Clock,
    period: str,
    last: datetime,
    first: datetime,
) -> None:
    clock.now = last - timedelta(hours=1)
    await set_limit(client, me, "1.00", period)
    assert (await debit(client, gateway_headers, USER, 1_000_000)).status_code == 201
    clock.now = last
    refused = await debit(client, gateway_headers, USER, 1)
    assert refused.status_code == 402
    assert refused.json()["resets_at"] == first.isoformat().replace("+00:00", "Z")
    clock.now = first
    fresh = await debit(client, gateway_headers, USER, 1_000_000)
    assert fresh.status_code == 201, fresh.text
    assert fresh.json()["limit_remaining_micros"] == 0
    listed = (await client.get("/v1/spend-limits", headers=me)).json()["data"][0]
    assert listed["spent"] == "1.000000"


async def test_a_total_limit_never_resets(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], me: dict[str, str], clock: Clock
) -> None:
    await set_limit(client, me, "1.00", "total")
    assert (await debit(client, gateway_headers, USER, 1_000_000)).status_code == 201
    clock.now = at(2031, 1, 1)
    assert (await debit(client, gateway_headers, USER, 1)).status_code == 402


async def test_a_hold_counts_in_the_window_it_was_reserved_in(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    me: dict[str, str],
    clock: Clock,
    session_maker: Any,
) -> None:
    await set_limit(client, me, "1.00", "day")
    clock.now = at(2026, 11, 27, 23, 59)
    await reserve(client, gateway_headers, USER, 600_000, hold_id="h1")
    clock.now = at(2026, 11, 28, 0, 1)
    # The new day starts empty: yesterday's hold does not count here.
    assert (await debit(client, gateway_headers, USER, 1_000_000)).status_code == 201
    # Capturing yesterday's hold settles yesterday's window, not today's.
    captured = await capture(client, gateway_headers, "h1", 900_000)
    assert captured.status_code == 200
    assert captured.json()["limit_remaining_micros"] == 0
    assert await counter(session_maker, USER, "account") == (at(2026, 11, 28), 1_000_000)


async def test_a_new_limit_counts_what_the_window_already_spent(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], me: dict[str, str]
) -> None:
    await debit(client, gateway_headers, USER, 700_000, api_key_id="k1")
    await reserve(client, gateway_headers, USER, 200_000, api_key_id="k1")
    body = await set_limit(client, me, "1.00", "day", key="k1")
    assert body == {
        "scope": "key:k1",
        "limit": "1.00",
        "period": "day",
        "spent": "0.900000",
        "remaining": "0.100000",
        "resets_at": "2026-11-28T00:00:00Z",
        "currency": "usd",
        "set_by": "user",
        "set_by_operator": None,
    }
    assert (await debit(client, gateway_headers, USER, 100_001, api_key_id="k1")).status_code == 402
    # Raising the limit keeps the count; moving it to another period recounts that window.
    assert (await set_limit(client, me, "5.00", "day", key="k1"))["spent"] == "0.900000"
    assert (await set_limit(client, me, "5.00", "month", key="k1"))["spent"] == "0.900000"
