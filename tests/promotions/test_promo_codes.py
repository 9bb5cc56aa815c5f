"""Promo codes: operators create and list them; a user redeems a code once, for a granted lot;
every code the user may not redeem is one 404; exactly `max_redemptions` succeed in a race."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import session_scope
from app.models.ledger import CreditLot, LedgerTransaction
from app.models.promotions import PromoCode, PromoRedemption
from testing.helpers.concurrency import together
from testing.helpers.ledger import gateway_balance

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
ADMIN_URL = "/v1/admin/promo-codes"
REDEEM_URL = "/v1/promo-codes/redeem"


@pytest.fixture(autouse=True)
def frozen_clock(app: Any) -> None:
    app.state.clock = lambda: NOW


def code_body(code: str = "Welcome-2027", **extra: Any) -> dict[str, Any]:
    return {
        "code": code,
        "amount": "10.00",
        "credit_expires_in_days": 30,
        "max_redemptions": 100,
        **extra,
    }


async def create(
    client: httpx.AsyncClient, admin_headers: dict[str, str], **extra: Any
) -> dict[str, Any]:
    response = await client.post(ADMIN_URL, json=code_body(**extra), headers=admin_headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def redeem(client: httpx.AsyncClient, headers: dict[str, str], code: str) -> httpx.Response:
    return await client.post(REDEEM_URL, json={"code": code}, headers=headers)


async def test_a_code_is_stored_upper_case_audited_and_listed_with_its_count(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: Any
) -> None:
    created = await create(client, admin_headers, redeemable_until="2027-06-01T00:00:00Z")
    assert created["code"] == "WELCOME-2027"
    assert (created["amount"], created["redeemed"], created["new_users_only"]) == (
        "10.00",
        0,
        False,
    )
    assert created["created_by"] == "admin-1"
    await create(client, admin_headers, code="second")
    assert (await redeem(client, user_headers("alice"), "welcome-2027")).status_code == 201
    first = await client.get(ADMIN_URL, params={"limit": 1}, headers=admin_headers)
    assert first.status_code == 200
    assert [c["code"] for c in first.json()["data"]] == ["SECOND"]
    rest = await client.get(
        ADMIN_URL, params={"limit": 1, "cursor": first.json()["next_cursor"]}, headers=admin_headers
    )
    assert [(c["code"], c["redeemed"]) for c in rest.json()["data"]] == [("WELCOME-2027", 1)]
    assert rest.json()["next_cursor"] is None
    audit = await client.get(
        "/v1/admin/audit-log", params={"subject_type": "promo_code"}, headers=admin_headers
    )
    assert [e["action"] for e in audit.json()["data"]] == ["promo_code_created"] * 2


async def test_the_same_code_again_answers_it_and_other_terms_conflict(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    created = await create(client, admin_headers)
    again = await client.post(ADMIN_URL, json=code_body("WELCOME-2027"), headers=admin_headers)
    assert again.status_code == 200
    assert again.json()["id"] == created["id"]
    other = await client.post(
        ADMIN_URL, json=code_body("welcome-2027", amount="20.00"), headers=admin_headers
    )
    assert other.status_code == 409
    assert other.json()["code"] == "promo_code_exists"


@pytest.mark.parametrize(
    "extra",
    [
        {"code": "ab"},
        {"code": "x" * 33},
        {"code": "-LEADING"},
        {"code": "with space"},
        {"code": "ÄPFEL"},
        {"code": "straße"},
        {"code": "semi;colon"},
        {"amount": "0"},
        {"max_redemptions": 0},
        {"credit_expires_in_days": 0},
        {"unknown": 1},
    ],
)
async def test_a_bad_code_is_refused(
    client: httpx.AsyncClient, admin_headers: dict[str, str], extra: dict[str, Any]
) -> None:
    response = await client.post(ADMIN_URL, json=code_body() | extra, headers=admin_headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


async def test_a_redemption_credits_a_granted_lot_once_in_any_case(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_headers: Any,
    gateway_headers: dict[str, str],
) -> None:
    await create(client, admin_headers)
    response = await redeem(client, user_headers("alice"), "  welcome-2027 ")
    assert response.status_code == 201, response.text
    lot = response.json()
    assert lot["source"] == "promo_code"
    assert (lot["amount"], lot["remaining"]) == ("10.000000", "10.000000")
    assert lot["expires_at"] == (NOW + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    assert lot["description"] == "Promo code WELCOME-2027"
    again = await redeem(client, user_headers("alice"), "WELCOME-2027")
    assert again.status_code == 409
    assert again.json()["code"] == "promo_code_already_redeemed"
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 10_000_000
    bob = await redeem(client, user_headers("bob"), "Welcome-2027")
    assert bob.status_code == 201


async def test_a_code_without_credit_expiry_grants_credit_that_never_expires(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: Any
) -> None:
    await create(client, admin_headers, credit_expires_in_days=None)
    response = await redeem(client, user_headers("alice"), "WELCOME-2027")
    assert response.status_code == 201
    assert response.json()["expires_at"] is None


async def test_every_code_the_user_may_not_redeem_is_the_same_404(
    client: httpx.AsyncClient, admin_headers: dict[str, str], user_headers: Any
) -> None:
    await create(client, admin_headers, code="ENDED", redeemable_until=NOW.isoformat())
    await create(client, admin_headers, code="ONCE", max_redemptions=1)
    await create(client, admin_headers, code="NEWBIES", new_users_only=True)
    await create(client, admin_headers, code="OPEN")
    assert (await redeem(client, user_headers("bob"), "ONCE")).status_code == 201
    # alice has credit now, so a new-users-only code is not for her.
    assert (await redeem(client, user_headers("alice"), "OPEN")).status_code == 201
    answers = [
        await redeem(client, user_headers("alice"), code)
        for code in ("NOPE-NOPE", "ENDED", "ONCE", "NEWBIES", "no-such-code!")
    ]
    assert [a.status_code for a in answers] == [404] * 5
    shapes = {
        tuple(sorted((k, v) for k, v in a.json().items() if k != "request_id")) for a in answers
    }
    assert len(shapes) == 1, shapes
    assert answers[0].json()["code"] == "promo_code_not_found"
    # A user with no credit still may.
    assert (await redeem(client, user_headers("carol"), "NEWBIES")).status_code == 201


async def test_a_refused_redemption_counts_nothing(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_headers: Any,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    await create(client, admin_headers, code="NEWBIES", new_users_only=True)
    await create(client, admin_headers, code="OPEN")
    assert (await redeem(client, user_headers("alice"), "OPEN")).status_code == 201
    assert (await redeem(client, user_headers("alice"), "NEWBIES")).status_code == 404
    async with session_scope(session_maker) as session:
        newbies = (
            await session.execute(select(PromoCode).where(PromoCode.code == "NEWBIES"))
        ).scalar_one()
        assert newbies.redeemed_count == 0
        assert await session.scalar(select(func.count()).select_from(CreditLot)) == 1


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_promo_redeem": "3/minute"}])
async def test_redemptions_are_rate_limited_per_user(
    client: httpx.AsyncClient, user_headers: Any
) -> None:
    for _ in range(3):
        assert (await redeem(client, user_headers("alice"), "GUESS-1")).status_code == 404
    limited = await redeem(client, user_headers("alice"), "GUESS-2")
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await redeem(client, user_headers("bob"), "GUESS-1")).status_code == 404


async def _counts(maker: async_sessionmaker[AsyncSession]) -> tuple[int, int, int, int]:
    async with session_scope(maker) as session:
        lots = await session.scalar(
            select(func.count()).select_from(CreditLot).where(CreditLot.source == "promo_code")
        )
        credits = await session.scalar(
            select(func.count())
            .select_from(LedgerTransaction)
            .where(LedgerTransaction.kind == "promo_code")
        )
        redemptions = await session.scalar(select(func.count()).select_from(PromoRedemption))
        counted = await session.scalar(select(PromoCode.redeemed_count))
        return int(lots or 0), int(credits or 0), int(redemptions or 0), int(counted or 0)


async def test_exactly_max_redemptions_succeed_among_100_concurrent_users(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_headers: Any,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    await create(client, admin_headers, code="RACE", max_redemptions=10)
    jobs = [(lambda n=n: redeem(client, user_headers(f"racer-{n}"), "race")) for n in range(100)]
    answers = await together(jobs)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] * 10 + [404] * 90
    assert await _counts(session_maker) == (10, 10, 10, 10)


async def test_one_user_redeeming_twice_at_once_is_credited_once(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_headers: Any,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    await create(client, admin_headers, code="TWICE")
    headers = user_headers("alice")
    answers = await together([lambda: redeem(client, headers, "TWICE")] * 8, workers=8)
    assert sorted(a.status_code for a in answers) == [201] + [409] * 7
    assert {a.json()["code"] for a in answers if a.status_code == 409} == {
        "promo_code_already_redeemed"
    }
    assert await _counts(session_maker) == (1, 1, 1, 1)


async def test_two_new_user_codes_redeemed_at_once_credit_a_new_user_once(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    user_headers: Any,
    session_maker: async_sessionmaker[AsyncSession],
) -> None:
    codes = [f"NEW-{n}" for n in range(4)]
    for code in codes:
        await create(client, admin_headers, code=code, new_users_only=True)
    headers = user_headers("alice")
    answers = await together([partial(redeem, client, headers, c) for c in codes], workers=4)
    assert sorted(a.status_code for a in answers) == [201, 404, 404, 404]
    async with session_scope(session_maker) as session:
        assert await session.scalar(select(func.count()).select_from(CreditLot)) == 1
        assert await session.scalar(select(func.sum(PromoCode.redeemed_count))) == 1
