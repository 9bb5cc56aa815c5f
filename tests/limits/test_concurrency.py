"""Spend limits under real concurrency on PostgreSQL: 64 requests in flight over the pool,
released together (see tests/usage/test_concurrency.py). A limit is a conditional update of its
counter in the debit's own statement, so no interleaving takes a window past its limit."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from datetime import timedelta
from functools import partial
from typing import Any

import httpx
import pytest

from testing.fixtures.app import RACE_POOL_SIZE
from testing.helpers.concurrency import together
from testing.helpers.ledger import debit, deposit, gateway_balance
from testing.helpers.limits import Clock, at, capture, counter, recounted, reserve, set_limit

USER = "racer"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Each debit its own statement, racing on the counters' row locks as across processes (in
    # one process, debits of one wallet are combined: tests/usage/test_combining.py).
    return {
        "database_pool_size": RACE_POOL_SIZE,
        "service_token_cache_seconds": 60,
        "gateway_combine_debits": False,
    }


@pytest.fixture
def clock(app: Any) -> Clock:
    clock = Clock(at(2026, 11, 27, 12))
    app.state.clock = clock
    return clock


@pytest.fixture
async def me(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Any,
) -> dict[str, str]:
    await deposit(client, admin_headers, USER, 1_000_000_000)
    await gateway_balance(client, gateway_headers, USER)  # the token lookup is cached now
    headers: dict[str, str] = user_headers(USER)
    return headers


async def test_64_debits_against_a_key_limit_take_exactly_what_it_allows(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    me: dict[str, str],
    clock: Clock,
    session_maker: Any,
) -> None:
    await set_limit(client, me, "1.00", "day", key="k1")
    responses = await together(
        [lambda: debit(client, gateway_headers, USER, 70_000, api_key_id="k1") for _ in range(64)]
    )
    statuses = Counter(r.status_code for r in responses)
    # 1.00 / 0.07 = 14 debits fit, leaving 0.02.
    assert statuses == {201: 14, 402: 50}
    assert {r.json()["code"] for r in responses if r.status_code == 402} == {"spend_limit_exceeded"}
    remaining = sorted(
        r.json()["limit_remaining_micros"] for r in responses if r.status_code == 201
    )
    assert remaining == [20_000 + 70_000 * i for i in range(14)]
    assert await counter(session_maker, USER, "key:k1") == (at(2026, 11, 27), 980_000)
    assert await recounted(session_maker, USER, at(2026, 11, 27), "k1") == 980_000
    wallet = await gateway_balance(client, gateway_headers, USER)
    assert wallet["balance_micros"] == 1_000_000_000 - 980_000


async def test_debits_of_two_keys_racing_an_account_limit_never_pass_it(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    me: dict[str, str],
    session_maker: Any,
    clock: Clock,
) -> None:
    await set_limit(client, me, "1.00", "month")
    await set_limit(client, me, "0.50", "day", key="k1")
    keys = itertools.cycle(["k1", "k2", None])
    jobs = []
    for _ in range(96):
        key = next(keys)
        extra = {"api_key_id": key} if key else {}
        jobs.append(lambda extra=extra: debit(client, gateway_headers, USER, 30_000, **extra))
    responses = await together(jobs)
    applied = sum(r.status_code == 201 for r in responses)
    assert applied == 33  # 1.00 / 0.03
    assert await counter(session_maker, USER, "account") == (at(2026, 11, 1), 990_000)
    _, k1 = await counter(session_maker, USER, "key:k1")
    assert k1 <= 500_000
    assert k1 == await recounted(session_maker, USER, at(2026, 11, 27), "k1")


async def test_holds_and_captures_racing_a_limit_never_pass_it(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    me: dict[str, str],
    session_maker: Any,
    clock: Clock,
) -> None:
    await set_limit(client, me, "1.00", "day", key="k1")
    hold_ids = [uuid.uuid4().hex for _ in range(64)]
    reserved = await together(
        [
            partial(reserve, client, gateway_headers, USER, 100_000, hold_id=h, api_key_id="k1")
            for h in hold_ids
        ]
    )
    assert Counter(r.status_code for r in reserved) == {201: 10, 402: 54}
    active = [h for h, r in zip(hold_ids, reserved, strict=True) if r.status_code == 201]
    # Capture each at 0.04 (giving 0.06 back) while 64 debits of 0.06 and 64 reserves of
    # 0.06 race for the room the captures free.
    jobs: list[Any] = [lambda h=h: capture(client, gateway_headers, h, 40_000) for h in active]
    jobs += [
        lambda: debit(client, gateway_headers, USER, 60_000, api_key_id="k1") for _ in range(64)
    ]
    jobs += [
        lambda: reserve(client, gateway_headers, USER, 60_000, api_key_id="k1") for _ in range(64)
    ]
    results = await together(jobs)
    assert all(r.status_code == 200 for r in results[: len(active)])
    took = sum(r.status_code == 201 for r in results[len(active) :])
    assert all(r.status_code in (201, 402) for r in results[len(active) :])
    _, spent = await counter(session_maker, USER, "key:k1")
    assert spent == 400_000 + 60_000 * took
    assert spent <= 1_000_000
    assert spent == await recounted(session_maker, USER, at(2026, 11, 27), "k1")


async def test_a_window_boundary_crossed_during_the_race(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    me: dict[str, str],
    session_maker: Any,
    app: Any,
) -> None:
    """Half the requests read the clock before midnight, half after, in any order: each
    window takes at most its limit, a request that reads the old day after the counter moved
    to the new one counts in the new one (windows never move back), and the new day is full."""
    app.state.clock = Clock(at(2026, 11, 27, 23, 59, 59))
    await set_limit(client, me, "1.00", "day", key="k1")
    reads = itertools.count()

    def flipping() -> Any:
        late = next(reads) >= 32
        return at(2026, 11, 28) if late else at(2026, 11, 27, 23, 59, 59, 999999)

    app.state.clock = flipping
    responses = await together(
        [lambda: debit(client, gateway_headers, USER, 100_000, api_key_id="k1") for _ in range(64)]
    )
    applied = sum(r.status_code == 201 for r in responses)
    assert await counter(session_maker, USER, "key:k1") == (at(2026, 11, 28), 1_000_000)
    # The new day took exactly 10; the old day at most 10.
    assert 10 <= applied <= 20
    assert Counter(r.status_code for r in responses)[402] == 64 - applied
    app.state.clock = Clock(at(2026, 11, 28) + timedelta(hours=1))
    assert (await debit(client, gateway_headers, USER, 1, api_key_id="k1")).status_code == 402


async def test_concurrent_first_puts_of_a_limit_all_succeed_with_one_row(
    client: httpx.AsyncClient, me: dict[str, str], session_maker: Any
) -> None:
    responses = await together(
        [
            partial(
                client.put,
                "/v1/spend-limits/keys/fresh",
                json={"limit": f"{i + 1}.00", "period": "day"},
                headers=me,
            )
            for i in range(8)
        ],
        workers=8,
    )
    assert [r.status_code for r in responses] == [200] * 8
    listed = (await client.get("/v1/spend-limits", headers=me)).json()["data"]
    assert len(listed) == 1
    assert listed[0]["limit"] in {f"{i + 1}.00" for i in range(8)}
