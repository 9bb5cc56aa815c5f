"""Usage reports: the summary and the CSV export of a generated month equal the
ledger's usage entries, to the micro."""

from __future__ import annotations

import csv
import io
import random
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.models.ledger import LedgerEntry, LedgerTransaction
from app.money import format_balance
from app.reports.schemas import EXPORT_COLUMNS
from testing.helpers.ledger import debit, deposit
from testing.helpers.limits import Clock, at, capture, reserve

USER = "reporter"
MODELS = ["gpt-4o-mini", "claude-3-haiku", None]
KEYS = ["k1", "k2", None]


@pytest.fixture
def clock(app: Any) -> Clock:
    clock = Clock(at(2026, 12, 1, 8))
    app.state.clock = clock
    return clock


@pytest.fixture
def me(user_headers: Callable[..., dict[str, str]]) -> dict[str, str]:
    return user_headers(USER)


async def generate_month(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    clock: Clock,
) -> list[dict[str, Any]]:
    """November 2026: debits and captured holds on every day, by several keys and models, and
    refusals that must not show; returns what was charged."""
    await deposit(client, admin_headers, USER, 10_000_000)
    rng = random.Random(13)
    charged = []
    for day in range(30):
        for n in range(4):
            clock.now = at(2026, 11, 1) + timedelta(days=day, hours=rng.randrange(24), seconds=n)
            model, key = rng.choice(MODELS), rng.choice(KEYS)
            amount = rng.randrange(1, 20_000)
            extra: dict[str, Any] = {"input_tokens": rng.randrange(5000), "output_tokens": n}
            if model:
                extra["model"] = model
            if key:
                extra["api_key_id"] = key
            if n == 3:
                hold_id = f"h-{day}"
                held = {"api_key_id": key} if key else {}
                assert (
                    await reserve(client, gateway_headers, USER, 30_000, hold_id=hold_id, **held)
                ).status_code == 201
                assert (await capture(client, gateway_headers, hold_id, amount)).status_code == 200
                charged.append(
                    {
                        "day": clock.now.date(),
                        "key": key,
                        "model": None,
                        "amount": amount,
                        "in": 0,
                        "out": 0,
                    }
                )
                continue
            response = await debit(client, gateway_headers, USER, amount, **extra)
            assert response.status_code == 201, response.text
            charged.append(
                {
                    "day": clock.now.date(),
                    "key": key,
                    "model": model,
                    "amount": amount,
                    "in": extra["input_tokens"],
                    "out": n,
                }
            )
        # Refused: shows nowhere.
        assert (await debit(client, gateway_headers, USER, 50_000_000)).status_code == 402
    # Outside the range: the day before and the month after.
    clock.now = at(2026, 10, 31, 23, 59, 59)
    await debit(client, gateway_headers, USER, 1_000)
    clock.now = at(2026, 12, 1)
    await debit(client, gateway_headers, USER, 1_000)
    return charged


async def ledger_usage(maker: Any) -> dict[str, int]:
    """The wallet's usage entries by transaction id (negated), from the ledger itself."""
    async with maker() as session:
        rows = (
            await session.execute(
                select(LedgerTransaction.id, LedgerEntry.amount_micros)
                .join(LedgerEntry, LedgerEntry.transaction_id == LedgerTransaction.id)
                .where(
                    LedgerTransaction.user_id == USER,
                    LedgerTransaction.kind.in_(["usage", "hold_capture"]),
                    LedgerEntry.account_id != "sys_usage",
                )
            )
        ).all()
    return {txn: -amount for txn, amount in rows}


NOVEMBER = {"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}


async def test_the_summary_and_export_of_a_month_equal_the_ledger(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    me: dict[str, str],
    clock: Clock,
    session_maker: Any,
) -> None:
    charged = await generate_month(client, admin_headers, gateway_headers, clock)
    total = sum(c["amount"] for c in charged)
    ledger = await ledger_usage(session_maker)
    # The ledger holds the month plus the two debits outside it.
    assert sum(ledger.values()) == total + 2_000

    for group_by, field in (("day", "day"), ("model", "model"), ("api_key", "key")):
        response = await client.get(
            "/v1/usage/summary", params={**NOVEMBER, "group_by": group_by}, headers=me
        )
        assert response.status_code == 200, response.text
        expected: dict[Any, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for c in charged:
            key = c[field].isoformat() if field == "day" else c[field]
            sums = expected[key]
            sums[0] += 1
            sums[1] += c["in"]
            sums[2] += c["out"]
            sums[3] += c["amount"]
        got = {
            g["group"]: [g["requests"], g["input_tokens"], g["output_tokens"], g["amount"]]
            for g in response.json()["data"]
        }
        assert got == {k: [*v[:3], format_balance(v[3])] for k, v in expected.items()}
        amounts = sum(Decimal(g["amount"]) for g in response.json()["data"])
        assert amounts * 1_000_000 == total

    export = await client.get("/v1/usage/export", params=NOVEMBER, headers=me)
    assert export.status_code == 200
    assert export.headers["content-type"].startswith("text/csv")
    assert "attachment" in export.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(export.text)))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    body = [dict(zip(EXPORT_COLUMNS, row, strict=True)) for row in rows[1:]]
    assert len(body) == len(charged)
    assert sum(Decimal(r["amount"]) for r in body) * 1_000_000 == total
    assert [r["created_at"] for r in body] == sorted(r["created_at"] for r in body)
    assert body[0]["created_at"].startswith("2026-11-01T")
    # Each row's balance_after is the one its ledger entry recorded.
    async with session_maker() as session:
        after = dict(
            (
                await session.execute(
                    select(LedgerTransaction.reference, LedgerEntry.balance_after_micros)
                    .join(LedgerEntry, LedgerEntry.transaction_id == LedgerTransaction.id)
                    .where(LedgerTransaction.user_id == USER, LedgerEntry.account_id != "sys_usage")
                )
            ).all()
        )
    for row in body:
        kind = "hold" if row["request_id"].startswith("h-") else "usage"
        assert row["balance_after"] == format_balance(after[f"{kind}:{row['request_id']}"])


async def test_another_user_sees_none_of_it_and_an_operator_sees_it_all(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Callable[..., dict[str, str]],
    clock: Clock,
) -> None:
    await deposit(client, admin_headers, USER, 1_000_000)
    clock.now = at(2026, 12, 3)
    await debit(client, gateway_headers, USER, 1_234, model="m", api_key_id="k1")
    clock.now = at(2026, 12, 3, 0, 0, 1)
    other = user_headers("someone-else")
    summary = await client.get("/v1/usage/summary", headers=other)
    assert summary.json() == {"data": [], "currency": "usd"}
    export = await client.get("/v1/usage/export", headers=other)
    assert export.text == ",".join(EXPORT_COLUMNS) + "\n"
    # Defaults: this month (UTC) up to now.
    mine = await client.get(
        "/v1/usage/summary", params={"group_by": "api_key"}, headers=user_headers(USER)
    )
    assert mine.json()["data"] == [
        {"group": "k1", "requests": 1, "input_tokens": 0, "output_tokens": 0, "amount": "0.001234"}
    ]
    admin = await client.get(
        f"/v1/admin/users/{USER}/usage/summary", params={"group_by": "model"}, headers=admin_headers
    )
    assert admin.json()["data"][0]["group"] == "m"
    admin_export = await client.get(f"/v1/admin/users/{USER}/usage/export", headers=admin_headers)
    assert admin_export.text.splitlines()[1].endswith(",k1,m,,,0.001234,0.998766")


@pytest.mark.parametrize(
    "params",
    [
        {"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
        {"from": "2025-01-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
        {"from": "1700000000"},
        {"group_by": "week"},
        {"format": "json"},
    ],
)
async def test_a_bad_range_or_grouping_is_a_422(
    client: httpx.AsyncClient, me: dict[str, str], params: dict[str, str]
) -> None:
    path = "/v1/usage/export" if "format" in params else "/v1/usage/summary"
    response = await client.get(path, params=params, headers=me)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


async def test_a_text_cell_is_never_a_spreadsheet_formula(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    me: dict[str, str],
) -> None:
    await deposit(client, admin_headers, USER, 1_000_000)
    await debit(client, gateway_headers, USER, 1, model='=HYPERLINK("x")', request_id="@r")
    row = (await client.get("/v1/usage/export", headers=me)).text.splitlines()[1]
    assert ",'@r,," in row
    assert "'=HYPERLINK" in row
