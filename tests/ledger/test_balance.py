"""`GET /v1/balance` and `GET /v1/balance/transactions` for the portal."""

from __future__ import annotations

from typing import Any

import httpx

from app.pagination import decode_cursor, encode_cursor
from testing.factories import paid_order
from testing.helpers.ledger import debit, deposit


async def test_a_new_user_has_a_zero_balance(client: httpx.AsyncClient, user_headers: Any) -> None:
    response = await client.get("/v1/balance", headers=user_headers("alice"))
    assert response.status_code == 200
    assert response.json() == {
        "balance": "0.000000",
        "held": "0.000000",
        "available": "0.000000",
        "expiring_soon": "0.000000",
        "next_expiry_at": None,
        "currency": "usd",
    }
    listing = await client.get("/v1/balance/transactions", headers=user_headers("alice"))
    assert listing.json() == {"data": [], "next_cursor": None}


async def test_the_balance_shows_six_decimals_and_what_is_held(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Any,
) -> None:
    await deposit(client, admin_headers, "alice", 12_345_678)
    await client.post(
        "/v1/internal/holds",
        json={"user_id": "alice", "hold_id": "h-1", "amount_micros": 345_678},
        headers=gateway_headers,
    )
    response = await client.get("/v1/balance", headers=user_headers("alice"))
    assert response.json() == {
        "balance": "12.345678",
        "held": "0.345678",
        "available": "12.000000",
        "expiring_soon": "0.000000",
        "next_expiry_at": None,
        "currency": "usd",
    }


async def test_transactions_are_mine_newest_first_with_usage_details(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Any,
    session_maker: Any,
) -> None:
    order = await paid_order(session_maker, user_id="alice", amount_micros=20_000_000)
    await deposit(client, admin_headers, "bob", 5_000_000)
    await debit(
        client,
        gateway_headers,
        "alice",
        7_000,
        model="gpt-4o-mini",
        input_tokens=1200,
        output_tokens=300,
    )
    await debit(client, gateway_headers, "alice", 1_000)
    body = (await client.get("/v1/balance/transactions", headers=user_headers("alice"))).json()
    rows = body["data"]
    assert [r["kind"] for r in rows] == ["usage", "usage", "topup"]
    assert rows[0]["amount"] == "-0.001000"
    assert rows[0]["balance_after"] == "19.992000"
    assert rows[0]["model"] is None
    assert rows[1]["amount"] == "-0.007000"
    assert (rows[1]["model"], rows[1]["input_tokens"], rows[1]["output_tokens"]) == (
        "gpt-4o-mini",
        1200,
        300,
    )
    assert rows[2]["amount"] == "20.000000"
    assert rows[2]["order_id"] == order.id
    assert all(r["currency"] == "usd" for r in rows)


async def test_transaction_pages_follow_the_cursor_without_gaps_or_repeats(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Any,
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    for amount in range(1, 7):
        assert (await debit(client, gateway_headers, "alice", amount)).status_code == 201
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(
            "/v1/balance/transactions", params=params, headers=user_headers("alice")
        )
        body = response.json()
        seen += [r["amount"] for r in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [f"-0.00000{n}" for n in range(6, 0, -1)] + ["1.000000"]


async def test_transactions_filter_by_kind(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Any,
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    await debit(client, gateway_headers, "alice", 5)
    headers = user_headers("alice")
    usage = await client.get("/v1/balance/transactions", params={"kind": "usage"}, headers=headers)
    assert [r["kind"] for r in usage.json()["data"]] == ["usage"]
    both = await client.get(
        "/v1/balance/transactions",
        params=[("kind", "usage"), ("kind", "adjustment")],
        headers=headers,
    )
    assert [r["kind"] for r in both.json()["data"]] == ["usage", "adjustment"]


async def test_bad_listing_parameters_are_422(client: httpx.AsyncClient, user_headers: Any) -> None:
    headers = user_headers("alice")
    for params in ({"limit": 101}, {"limit": 0}, {"kind": "salary"}, {"cursor": "!!"}):
        response = await client.get("/v1/balance/transactions", params=params, headers=headers)
        assert response.status_code == 422, params
        assert response.json()["code"] == "validation_error"


async def test_the_balance_needs_a_portal_token(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    assert (await client.get("/v1/balance")).status_code == 401
    assert (await client.get("/v1/balance", headers=gateway_headers)).status_code == 403
    assert (await client.get("/v1/balance/transactions")).status_code == 401


async def _all_transactions(
    client: httpx.AsyncClient, headers: dict[str, str], limit: int
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/v1/balance/transactions", params=params, headers=headers)
        assert response.status_code == 200, response.text
        rows += response.json()["data"]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return rows


async def test_each_event_of_a_batch_is_its_own_line_with_its_model_and_tokens(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Any,
) -> None:
    """A batch posts one wallet leg per user, but the user's list shows every event."""
    await deposit(client, admin_headers, "alice", 1_000_000)
    await deposit(client, admin_headers, "bob", 1_000_000)
    await debit(client, gateway_headers, "alice", 10, model="before", input_tokens=1)
    events = [
        {
            "user_id": "alice",
            "request_id": "b-1",
            "amount_micros": 100,
            "model": "m-1",
            "input_tokens": 11,
            "output_tokens": 12,
        },
        {"user_id": "bob", "request_id": "b-2", "amount_micros": 200, "model": "bob's"},
        {
            "user_id": "alice",
            "request_id": "b-3",
            "amount_micros": 300,
            "model": "m-3",
            "input_tokens": 31,
            "output_tokens": 32,
        },
        {"user_id": "alice", "request_id": "b-4", "amount_micros": 400},
    ]
    response = await client.post(
        "/v1/internal/usage/batch", json={"events": events}, headers=gateway_headers
    )
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["applied"] * 4
    await debit(client, gateway_headers, "alice", 20, model="after", output_tokens=2)

    expected = [
        ("-0.000020", "0.999170", "after", None, 2),
        ("-0.000400", "0.999190", None, None, None),
        ("-0.000300", "0.999590", "m-3", 31, 32),
        ("-0.000100", "0.999890", "m-1", 11, 12),
        ("-0.000010", "0.999990", "before", 1, None),
        ("1.000000", "1.000000", None, None, None),
    ]
    for limit in (1, 2, 3, 100):
        rows = await _all_transactions(client, user_headers("alice"), limit)
        assert [
            (r["amount"], r["balance_after"], r["model"], r["input_tokens"], r["output_tokens"])
            for r in rows
        ] == expected, limit
        assert [r["kind"] for r in rows] == ["usage"] * 5 + ["adjustment"]
    usage_only = await client.get(
        "/v1/balance/transactions", params={"kind": "usage"}, headers=user_headers("alice")
    )
    assert len(usage_only.json()["data"]) == 5
    bob = await _all_transactions(client, user_headers("bob"), 10)
    assert [(r["amount"], r["model"]) for r in bob] == [
        ("-0.000200", "bob's"),
        ("1.000000", None),
    ]


async def test_a_cursor_made_before_batch_lines_still_resumes_after_its_entry(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Any,
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    for amount in (1, 2, 3):
        assert (await debit(client, gateway_headers, "alice", amount)).status_code == 201
    headers = user_headers("alice")
    first = await client.get("/v1/balance/transactions", params={"limit": 1}, headers=headers)
    entry_id, record_id = decode_cursor(first.json()["next_cursor"], 2)
    assert record_id == 0
    rest = await client.get(
        "/v1/balance/transactions",
        params={"cursor": encode_cursor(entry_id)},
        headers=headers,
    )
    assert [r["amount"] for r in rest.json()["data"]] == ["-0.000002", "-0.000001", "1.000000"]
