"""`POST /v1/internal/usage`: one debit per request id, replays, conflicts, 402 and 422."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from testing.helpers.ledger import debit, deposit, gateway_balance


async def test_a_debit_takes_the_amount_and_answers_the_wallet(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    response = await debit(
        client,
        gateway_headers,
        "alice",
        7_000,
        request_id="req-1",
        model="gpt-4o-mini",
        input_tokens=120,
        output_tokens=40,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["request_id"] == "req-1"
    assert body["user_id"] == "alice"
    assert body["amount_micros"] == 7_000
    assert body["balance_micros"] == 993_000
    assert body["held_micros"] == 0
    assert body["available_micros"] == 993_000
    assert body["replayed"] is False
    assert body["transaction_id"].startswith("txn_")


async def test_the_same_request_twice_debits_once_and_answers_the_original(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    first = await debit(client, gateway_headers, "alice", 7_000, request_id="req-1", model="m")
    second = await debit(client, gateway_headers, "alice", 7_000, request_id="req-1", model="m")
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["replayed"] is True
    assert second.json()["transaction_id"] == first.json()["transaction_id"]
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 993_000


async def test_a_replay_answers_the_original_whether_or_not_the_wallet_could_pay_it_again(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    # The debit statement looks for a replay only when it debited nothing (the wallet cannot
    # pay it again); a replay the wallet could pay runs into the reference's unique index, and
    # the store answers from the original.
    await deposit(client, admin_headers, "alice", 10_000)
    first = await debit(client, gateway_headers, "alice", 7_000, request_id="req-1", model="m")
    assert first.status_code == 201
    for _ in ("not covered", "covered"):
        again = await debit(client, gateway_headers, "alice", 7_000, request_id="req-1", model="m")
        assert again.status_code == 200, again.text
        assert again.json()["replayed"] is True
        assert again.json()["transaction_id"] == first.json()["transaction_id"]
        await deposit(client, admin_headers, "alice", 10_000)
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 23_000


@pytest.mark.parametrize(
    "change",
    [{"amount_micros": 8_000}, {"model": "other"}, {"user_id": "bob"}, {"input_tokens": 1}],
)
async def test_the_same_request_id_with_another_body_is_a_conflict(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    change: dict[str, Any],
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    await deposit(client, admin_headers, "bob", 1_000_000)
    original = {"user_id": "alice", "request_id": "req-1", "amount_micros": 7_000, "model": "m"}
    assert (
        await client.post("/v1/internal/usage", json=original, headers=gateway_headers)
    ).status_code == 201
    response = await client.post(
        "/v1/internal/usage", json=original | change, headers=gateway_headers
    )
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_conflict"
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 993_000
    assert (await gateway_balance(client, gateway_headers, "bob"))["balance_micros"] == 1_000_000


async def test_a_debit_beyond_the_available_balance_is_402_with_the_available_amount(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "alice", 10_000)
    response = await debit(client, gateway_headers, "alice", 10_001, request_id="req-1")
    assert response.status_code == 402
    problem = response.json()
    assert problem["code"] == "insufficient_balance"
    assert problem["available_micros"] == 10_000
    assert problem["required_micros"] == 10_001
    assert response.headers["content-type"].startswith("application/problem+json")
    # Nothing was recorded under the id: once the balance covers it, a retry applies.
    await deposit(client, admin_headers, "alice", 1)
    retry = await debit(client, gateway_headers, "alice", 10_001, request_id="req-1")
    assert retry.status_code == 201
    assert retry.json()["balance_micros"] == 0


async def test_a_user_without_a_wallet_gets_402_with_nothing_available(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    response = await debit(client, gateway_headers, "nobody", 1)
    assert response.status_code == 402
    assert response.json()["available_micros"] == 0
    assert (await gateway_balance(client, gateway_headers, "nobody")) == {
        "user_id": "nobody",
        "balance_micros": 0,
        "held_micros": 0,
        "available_micros": 0,
    }


async def test_the_whole_balance_can_be_spent_to_zero(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "alice", 14_000)
    assert (await debit(client, gateway_headers, "alice", 7_000)).status_code == 201
    assert (await debit(client, gateway_headers, "alice", 7_000)).status_code == 201
    assert (await debit(client, gateway_headers, "alice", 1)).status_code == 402


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount_micros": 0}, "amount_micros"),
        ({"amount_micros": -5}, "amount_micros"),
        ({"amount_micros": 1.5}, "amount_micros"),
        ({"amount_micros": "100"}, "amount_micros"),
        ({"amount_micros": 1_000_000_000_001}, "amount_micros"),
        ({"request_id": ""}, "request_id"),
        ({"request_id": "has space"}, "request_id"),
        ({"request_id": "r" * 201}, "request_id"),
        ({"user_id": ""}, "user_id"),
        ({"input_tokens": -1}, "input_tokens"),
        ({"model": "m" * 201}, "model"),
        ({"metadata": {"blob": "x" * 5000}}, "metadata"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_invalid_usage_is_422_naming_the_field(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    body: dict[str, Any],
    field: str,
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    valid = {"user_id": "alice", "request_id": "req-1", "amount_micros": 7_000}
    response = await client.post("/v1/internal/usage", json=valid | body, headers=gateway_headers)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert field in [e["field"] for e in problem["errors"]]
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 1_000_000


async def test_a_missing_field_is_422(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    response = await client.post(
        "/v1/internal/usage", json={"user_id": "alice"}, headers=gateway_headers
    )
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"request_id", "amount_micros"}


async def test_gateway_endpoints_need_a_service_token(
    client: httpx.AsyncClient, user_headers: Any
) -> None:
    body = {"user_id": "alice", "request_id": "req-1", "amount_micros": 7_000}
    assert (await client.post("/v1/internal/usage", json=body)).status_code == 401
    portal = await client.post("/v1/internal/usage", json=body, headers=user_headers("alice"))
    assert portal.status_code == 403
    assert (await client.get("/v1/internal/accounts/alice/balance")).status_code == 401


async def test_a_negative_balance_refuses_usage_with_the_negative_available(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "alice", 100_000)
    hold = await client.post(
        "/v1/internal/holds",
        json={"user_id": "alice", "hold_id": "h-1", "amount_micros": 100_000},
        headers=gateway_headers,
    )
    assert hold.status_code == 201
    capture = await client.post(
        "/v1/internal/holds/h-1/capture", json={"amount_micros": 200_000}, headers=gateway_headers
    )
    assert capture.status_code == 200
    assert capture.json()["balance_micros"] == -100_000
    response = await debit(client, gateway_headers, "alice", 1)
    assert response.status_code == 402
    assert response.json()["available_micros"] == -100_000
