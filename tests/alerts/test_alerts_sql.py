"""The crossing rule as SQL (`app.alerts.sql`), on its own: what it fires and re-arms, and the
payload it writes. (Embedded in the gateway's statements, under concurrency:
`tests/alerts/test_alerts.py`.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from app.alerts.sql import balance_alert_ctes
from app.config import Settings
from app.money import format_amount, format_balance
from testing.factories import asyncpg_dsn

USD = 1_000_000

BALANCE_CROSSING = f"""
WITH crossing AS (
    SELECT $1::text AS user_id, $2::bigint AS available_before, $3::bigint AS available_after
), {balance_alert_ctes("crossing")}
SELECT threshold_micros FROM alert_fired ORDER BY threshold_micros DESC
"""
"""The rule on its own, as `app.ledger.balance_events` runs it for postings: `$1` user id, `$2`
available before, `$3` available after; answers the fired thresholds."""


@pytest.fixture
async def conn(app: Any, settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(asyncpg_dsn(settings))
    try:
        yield connection
    finally:
        await connection.close()


async def _thresholds(
    conn: asyncpg.Connection, user_id: str, *usd: int, armed: bool = True
) -> None:
    for amount in usd:
        await conn.execute(
            "INSERT INTO balance_alerts (user_id, threshold_micros, armed, created_at)"
            " VALUES ($1, $2, $3, now())",
            user_id,
            amount * USD,
            armed,
        )


async def _notified(conn: asyncpg.Connection, user_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, type, data::text AS data FROM notifications WHERE user_id = $1"
        " ORDER BY created_at, (data::json->>'threshold_micros')::bigint DESC",
        user_id,
    )
    assert all(r["id"].startswith("ntf_") and r["type"] == "balance.low" for r in rows)
    return [json.loads(r["data"]) for r in rows]


async def test_the_rule_fires_once_per_crossing_and_re_arms(conn: asyncpg.Connection) -> None:
    await _thresholds(conn, "user-1", 5, 1)

    async def change(before: int, after: int) -> list[int]:
        return [r[0] for r in await conn.fetch(BALANCE_CROSSING, "user-1", before, after)]

    assert await change(10 * USD, 6 * USD) == []
    assert await change(6 * USD, 4 * USD) == [5 * USD]
    assert await change(4 * USD, 3 * USD) == []
    assert await change(3 * USD, 7 * USD) == []  # re-arms 5.00 (1.00 never fired)
    assert await change(7 * USD, 500_000) == [5 * USD, 1 * USD]
    assert await change(500_000, -1_500_000) == []
    assert await _notified(conn, "user-1") == [
        _balance_low(5 * USD, 4 * USD),
        _balance_low(5 * USD, 500_000),
        _balance_low(1 * USD, 500_000),
    ]
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM notifications WHERE email_status = 'pending'"
            " AND webhook_status = 'pending' AND email_next_attempt_at <= now()"
        )
        == 3
    )


@pytest.mark.parametrize("available", [0, 1, 999_999, -1, -1_500_001, 123_456_789_012])
async def test_the_payload_names_the_amounts_in_the_portal_formats(
    conn: asyncpg.Connection, available: int
) -> None:
    await _thresholds(conn, "user-x", 0, 5_000_000_000)
    await conn.fetch(BALANCE_CROSSING, "user-x", 10_000_000 * USD, available)
    expected = [_balance_low(5_000_000_000 * USD, available)]
    if available < 0:
        expected.append(_balance_low(0, available))
    assert await _notified(conn, "user-x") == expected


def _balance_low(threshold_micros: int, available_micros: int) -> dict[str, Any]:
    """`balance.low`'s data (`app.notifications.events`): the threshold with 2 decimals, the
    available balance with 6, both also in micros."""
    return {
        "threshold": format_amount(threshold_micros),
        "threshold_micros": threshold_micros,
        "available": format_balance(available_micros),
        "available_micros": available_micros,
        "currency": "usd",
    }
