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


async def test_a_batch_is_one_ledger_transaction_and_a_record_per_event(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Any,
    session_maker: Any,
) -> None:
    from sqlalchemy import text

    for user in ("u1", "u2"):
        await deposit(client, admin_headers, user, 1_000_000)
    events = [
        event(
            f"e-{i}",
            1_000 + i,
            user=f"u{i % 2 + 1}",
            api_key_id="k1",
            model="m",
            input_tokens=i,
            output_tokens=2 * i,
            metadata={"n": i},
        )
        for i in range(6)
    ]
    events.append(event("e-big", 2_000_000, user="u1"))  # refused: the batch is planned
    body = (await send(client, gateway_headers, events)).json()
    assert [r["status"] for r in body["results"]] == ["applied"] * 6 + ["insufficient_balance"]
    # Each user's events, one by one: the balance right after each.
    assert [r["balance_micros"] for r in body["results"][:6]] == [
        1_000_000 - 1_000,
        1_000_000 - 1_001,
        1_000_000 - 1_000 - 1_002,
        1_000_000 - 1_001 - 1_003,
        1_000_000 - 1_000 - 1_002 - 1_004,
        1_000_000 - 1_001 - 1_003 - 1_005,
    ]
    async with session_maker() as session:
        records = (
            await session.execute(
                text(
                    "SELECT reference, request_id, api_key_id, model, input_tokens,"
                    " output_tokens, amount_micros, balance_after_micros, transaction_id,"
                    " request_hash IS NOT NULL AS hashed, metadata::text AS metadata"
                    " FROM usage_records ORDER BY request_id"
                )
            )
        ).all()
        legs = (
            await session.execute(
                text(
                    "SELECT t.id, t.reference, e.account_id, e.amount_micros"
                    " FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id"
                    " WHERE t.kind = 'usage' ORDER BY e.id"
                )
            )
        ).all()
    assert [r.request_id for r in records] == [f"e-{i}" for i in range(6)]
    assert [r.reference for r in records] == [f"usage:e-{i}" for i in range(6)]
    assert all(r.hashed and r.api_key_id == "k1" and r.model == "m" for r in records)
    assert [(r.input_tokens, r.output_tokens, r.amount_micros) for r in records] == [
        (i, 2 * i, 1_000 + i) for i in range(6)
    ]
    assert [r.balance_after_micros for r in records] == [
        r["balance_micros"] for r in body["results"][:6]
    ]
    assert records[3].metadata == '{"n":3}'
    # u1 has an event refused, so the batch statement wrote nothing and the plan decided the
    # whole batch: ONE ledger transaction, with a wallet leg per user and the usage leg once.
    transactions = {leg.id for leg in legs}
    assert len(transactions) == 1
    (transaction_id,) = transactions
    assert {leg.reference for leg in legs} == {f"usage-batch:{transaction_id}"}
    assert {r.transaction_id for r in records} == transactions
    u1, u2 = 1_000 + 1_002 + 1_004, 1_001 + 1_003 + 1_005
    assert sorted(leg.amount_micros for leg in legs) == [-u2, -u1, u1 + u2]
    assert body["results"][0]["transaction_id"] == body["results"][1]["transaction_id"]
    assert body["results"][1]["transaction_id"] == transaction_id
    # The export still lists every event with its request id, key, model and tokens.
    exported = await client.get("/v1/usage/export", headers=user_headers("u2"))
    assert exported.status_code == 200
    lines = exported.text.strip().splitlines()
    assert len(lines) == 1 + 3
    for i in (1, 3, 5):
        assert any(f"e-{i}" in line and "k1" in line and ",m," in line for line in lines[1:])


async def test_a_batch_event_applied_before_is_replayed_alone(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "alice", 100_000)
    first = (await send(client, gateway_headers, [event("y-1", 5_000)])).json()
    assert first["results"][0]["status"] == "applied"
    again = await client.post(
        "/v1/internal/usage", json=event("y-1", 5_000), headers=gateway_headers
    )
    assert again.status_code == 200, again.text
    assert again.json()["replayed"] is True
    assert again.json()["transaction_id"] == first["results"][0]["transaction_id"]
    other = await client.post(
        "/v1/internal/usage", json=event("y-1", 6_000), headers=gateway_headers
    )
    assert other.status_code == 409
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 95_000
