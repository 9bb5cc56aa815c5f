"""`POST /v1/internal/usage/batch`: each event on its own, one result per event, in order."""

from __future__ import annotations

from typing import Any

import httpx

from testing.helpers.ledger import deposit, gateway_balance


def event(request_id: str, amount: int, user: str = "alice", **extra: Any) -> dict[str, Any]:
    return {"user_id": user, "request_id": request_id, "amount_micros": amount, **extra}


async def send(
    client: httpx.AsyncClient, headers: dict[str, str], events: list[Any]
) -> httpx.Response:
    return await client.post("/v1/internal/usage/batch", json={"events": events}, headers=headers)


async def test_one_bad_event_does_not_undo_the_others(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "alice", 100_000)
    await deposit(client, admin_headers, "bob", 50_000)
    events = [
        event("a-1", 40_000, model="m", input_tokens=3),
        event("b-1", 60_000, user="bob"),  # bob has 50_000
        event("a-2", 50_000),
        event("a-1", 40_000, model="m", input_tokens=3),  # same id, same body
        event("a-1", 41_000),  # same id, another body
        event("a-3", 20_000),  # alice has 10_000 left
        {"user_id": "alice", "request_id": "a-4", "amount_micros": 0},
        {"user_id": "alice", "request_id": "a-5", "amount_micros": 1, "surprise": True},
        {"user_id": "alice"},
        event("b-2", 50_000, user="bob"),
        event("a-6", 1_000_000_000_001),
    ]
    response = await send(client, gateway_headers, events)
    assert response.status_code == 200, response.text
    body = response.json()
    statuses = [(r["index"], r["request_id"], r["status"]) for r in body["results"]]
    assert statuses == [
        (0, "a-1", "applied"),
        (1, "b-1", "insufficient_balance"),
        (2, "a-2", "applied"),
        (3, "a-1", "replayed"),
        (4, "a-1", "conflict"),
        (5, "a-3", "insufficient_balance"),
        (6, "a-4", "invalid"),
        (7, "a-5", "invalid"),
        (8, None, "invalid"),
        (9, "b-2", "applied"),
        (10, "a-6", "invalid"),
    ]
    assert (body["applied"], body["replayed"], body["failed"]) == (3, 1, 7)
    results = body["results"]
    assert results[0]["balance_micros"] == 60_000
    assert results[1]["available_micros"] == 50_000
    assert results[5]["available_micros"] == 10_000
    assert results[3]["transaction_id"] == results[0]["transaction_id"]
    assert results[6]["errors"][0]["field"] == "amount_micros"
    assert results[7]["errors"] == [{"field": "surprise", "message": "unknown field"}]
    assert {e["field"] for e in results[8]["errors"]} == {"request_id", "amount_micros"}
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 10_000
    assert (await gateway_balance(client, gateway_headers, "bob"))["balance_micros"] == 0


async def test_a_resent_batch_replays_what_was_applied(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "alice", 100_000)
    events = [event(f"r-{i}", 10_000) for i in range(5)]
    first = (await send(client, gateway_headers, events)).json()
    second = (await send(client, gateway_headers, events)).json()
    assert first["applied"] == 5
    assert second["replayed"] == 5
    assert second["applied"] == 0
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 50_000


async def test_a_usage_event_applied_alone_is_replayed_in_a_batch(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "alice", 100_000)
    single = await client.post(
        "/v1/internal/usage", json=event("x-1", 5_000), headers=gateway_headers
    )
    assert single.status_code == 201
    batch = (await send(client, gateway_headers, [event("x-1", 5_000)])).json()
    assert batch["results"][0]["status"] == "replayed"


async def test_a_batch_holds_at_most_1000_events_and_at_least_one(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    too_many = [event(f"r-{i}", 1) for i in range(1001)]
    assert (await send(client, gateway_headers, too_many)).status_code == 422
    assert (await send(client, gateway_headers, [])).status_code == 422
    extra = await client.post(
        "/v1/internal/usage/batch", json={"events": [], "x": 1}, headers=gateway_headers
    )
    assert extra.status_code == 422


async def test_a_full_batch_of_1000_applies_every_event(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    for user in ("u1", "u2", "u3"):
        await deposit(client, admin_headers, user, 1_000_000)
    events = [event(f"r-{i}", 1_000, user=f"u{i % 3 + 1}") for i in range(1000)]
    body = (await send(client, gateway_headers, events)).json()
    assert body["applied"] == 1000
    assert [r["index"] for r in body["results"]] == list(range(1000))
    totals = [
        (await gateway_balance(client, gateway_headers, u))["balance_micros"]
        for u in ("u1", "u2", "u3")
    ]
    assert totals == [1_000_000 - 334_000, 1_000_000 - 333_000, 1_000_000 - 333_000]
