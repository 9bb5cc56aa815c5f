"""`POST /v1/internal/holds/captures`: a batch of captures, each decided exactly as its single
capture (`POST /v1/internal/holds/{hold_id}/capture`) would be, one after the other in the order
sent, answered one result per capture in that order; the store applies it as one statement
(`UsageStore.capture_batch`) for the wallets it can decide whole."""

from __future__ import annotations

import csv
import functools
import io
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.ledger.verify import verify_ledger
from app.usage.schemas import HoldCaptureBatchOut
from testing.fixtures.app import RACE_POOL_SIZE
from testing.helpers.captures import URL, captures, combined, reserve, usage
from testing.helpers.concurrency import together
from testing.helpers.ledger import debit, deposit, gateway_balance

Maker = async_sessionmaker[AsyncSession]


async def test_a_mixed_batch_answers_each_capture_as_its_single_capture_would_in_order(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    for user in ("alice", "bob"):
        await deposit(client, admin_headers, user, 1_000_000)
    for hold_id, user in [
        ("a-1", "alice"),
        ("a-2", "alice"),
        ("a-done", "alice"),
        ("a-gone", "alice"),
        ("a-big", "alice"),
        ("b-1", "bob"),
        ("b-2", "bob"),
        ("b-twice", "bob"),
        ("b-other", "bob"),
    ]:
        await reserve(client, gateway_headers, user, hold_id, 100_000)
    # Captured before (the batch's replay), released before (its invalid state).
    single = await client.post(
        "/v1/internal/holds/a-done/capture", json={"amount_micros": 40_000}, headers=gateway_headers
    )
    assert single.status_code == 200
    released = await client.post("/v1/internal/holds/a-gone/release", headers=gateway_headers)
    assert released.status_code == 200

    response = await captures(
        client,
        gateway_headers,
        [
            usage("a-1", 70_000),
            usage("nope", 1),
            {"amount_micros": 40_000, "hold_id": "a-done"},  # the single capture's body
            usage("a-gone", 1),
            usage("a-big", 200_001),  # past twice its hold
            usage("b-1", 150_000, metadata={"route": "eu"}),
            usage("b-twice", 30_000),
            usage("b-twice", 30_000),  # the same body again: a replay of the one before
            usage("b-twice", 30_001),  # another body: a conflict
            {"hold_id": "b-2", "amount_micros": -1},  # invalid: nothing applied
            {"amount_micros": 1},  # no hold id
            usage("a-2", 0),  # a capture of 0 releases the hold
            usage("a-done", 40_001),  # captured before with another body
        ],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    statuses = [(r["index"], r["hold_id"], r["status"]) for r in body["results"]]
    assert statuses == [
        (0, "a-1", "captured"),
        (1, "nope", "not_found"),
        (2, "a-done", "replayed"),
        (3, "a-gone", "invalid_state"),
        (4, "a-big", "capture_exceeds_hold"),
        (5, "b-1", "captured"),
        (6, "b-twice", "captured"),
        (7, "b-twice", "replayed"),
        (8, "b-twice", "idempotency_conflict"),
        (9, "b-2", "invalid"),
        (10, None, "invalid"),
        (11, "a-2", "captured"),
        (12, "a-done", "idempotency_conflict"),
    ]
    assert (body["captured"], body["replayed"], body["failed"]) == (4, 2, 7)
    results = body["results"]
    # Each capture answers the hold and its wallet as the single capture does, right after it.
    a1 = results[0]["hold"]
    assert (a1["status"], a1["captured_micros"], a1["replayed"]) == ("captured", 70_000, False)
    assert a1["user_id"] == "alice"
    assert results[2]["hold"]["captured_micros"] == 40_000
    assert results[2]["hold"]["resolved_at"] == single.json()["resolved_at"]
    assert results[3]["hold_status"] == "released"
    assert (results[4]["hold_amount_micros"], results[4]["max_capture_micros"]) == (
        100_000,
        200_000,
    )
    assert results[4]["hold"] is None
    assert [e["field"] for e in results[9]["errors"]] == ["amount_micros"]
    assert "hold_id" in [e["field"] for e in results[10]["errors"]]
    assert results[7]["hold"]["resolved_at"] == results[6]["hold"]["resolved_at"]
    assert results[7]["hold"]["replayed"] is True
    # Bob's captures in order: 150_000 (over its hold), then 30_000.
    assert (results[5]["hold"]["balance_micros"], results[6]["hold"]["balance_micros"]) == (
        850_000,
        820_000,
    )
    alice = await gateway_balance(client, gateway_headers, "alice")
    # a-1 70_000 and a-done 40_000 spent; a-big still held (refused), a-2 released.
    assert (alice["balance_micros"], alice["held_micros"]) == (890_000, 100_000)
    bob = await gateway_balance(client, gateway_headers, "bob")
    assert (bob["balance_micros"], bob["held_micros"]) == (820_000, 200_000)
    # What was refused is still capturable alone, as after a refused single capture.
    alone = await client.post(
        "/v1/internal/holds/a-big/capture", json={"amount_micros": 1}, headers=gateway_headers
    )
    assert alone.status_code == 200
    async with session_maker() as session:
        assert await verify_ledger(session) == []


async def test_the_ledger_shows_batched_captures_exactly_as_single_ones(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    user_headers: Callable[..., dict[str, str]],
    session_maker: Maker,
) -> None:
    """Two wallets, the same holds and captures: one captured one by one, the other in one
    batch. Their statements and exports are the same line for line (ids and times aside), and
    the batch's captures are one ledger transaction."""
    plan = [(f"h{n}", 50_000 + n, 40_000 + 7 * n, f"model-{n % 2}", n, 2 * n) for n in range(6)]
    for user in ("solo", "batched"):
        await deposit(client, admin_headers, user, 1_000_000)
        for hold_id, held, *_ in plan:
            await reserve(client, gateway_headers, user, f"{user}-{hold_id}", held)
    before = combined()
    for hold_id, _, amount, model, tokens_in, tokens_out in plan:
        single = await client.post(
            f"/v1/internal/holds/solo-{hold_id}/capture",
            json={
                "amount_micros": amount,
                "model": model,
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
            },
            headers=gateway_headers,
        )
        assert single.status_code == 200
    batch = await captures(
        client,
        gateway_headers,
        [
            {
                "hold_id": f"batched-{hold_id}",
                "amount_micros": amount,
                "model": model,
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
            }
            for hold_id, _, amount, model, tokens_in, tokens_out in plan
        ],
    )
    assert batch.status_code == 200
    assert batch.json()["captured"] == len(plan)
    assert combined() - before == len(plan), "the batch was not one statement"

    def strip(line: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in line.items() if k not in ("id", "created_at")}

    statements = []
    exports = []
    for user in ("solo", "batched"):
        headers = user_headers(user)
        listing = await client.get(
            "/v1/balance/transactions", params={"kind": "hold_capture"}, headers=headers
        )
        statements.append([strip(line) for line in listing.json()["data"]])
        export = await client.get("/v1/usage/export", headers=headers)
        rows = list(csv.DictReader(io.StringIO(export.text)))
        for row in rows:
            row.pop("created_at")
            row["request_id"] = row["request_id"].removeprefix(f"{user}-")
        exports.append(rows)
    assert len(statements[0]) == len(plan)
    assert statements[0] == statements[1]
    assert [r["request_id"] for r in exports[0]] == [hold_id for hold_id, *_ in plan]
    assert exports[0] == exports[1]
    async with session_maker() as session:
        txns = (
            await session.execute(
                text(
                    "SELECT count(DISTINCT t.id), min(t.reference) FROM usage_records r"
                    " JOIN ledger_transactions t ON t.id = r.transaction_id"
                    " WHERE r.user_id = 'batched'"
                )
            )
        ).one()
        assert txns[0] == 1
        assert txns[1].startswith("hold-batch:")
        assert await verify_ledger(session) == []


async def test_a_capture_may_take_the_balance_negative_in_a_batch_as_alone(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    await reserve(client, gateway_headers, "alice", "h-1", 900_000)
    await reserve(client, gateway_headers, "alice", "h-2", 100_000)
    response = await captures(
        client, gateway_headers, [usage("h-1", 1_500_000), usage("h-2", 150_000)]
    )
    assert response.status_code == 200
    assert [r["status"] for r in response.json()["results"]] == ["captured", "captured"]
    assert [r["hold"]["balance_micros"] for r in response.json()["results"]] == [
        -500_000,
        -650_000,
    ]
    refused = await debit(client, gateway_headers, "alice", 1)
    assert refused.status_code == 402
    assert refused.json()["available_micros"] == -650_000
    async with session_maker() as session:
        assert await verify_ledger(session) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"captures": []}, "captures"),
        ({"captures": [usage(f"h-{n}", 1) for n in range(1001)]}, "captures"),
        ({"captures": "h-1"}, "captures"),
        ({"captures": [usage("h-1", 1), 7]}, "captures"),
        ({"captures": [usage("h-1", 1)], "extra": 1}, "extra"),
        ({}, "captures"),
    ],
)
async def test_a_bad_batch_is_a_422_problem_and_applies_nothing(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    body: dict[str, Any],
    field: str,
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    await reserve(client, gateway_headers, "alice", "h-1", 100_000)
    response = await client.post(URL, json=body, headers=gateway_headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"].split(".")[0] for e in response.json()["errors"]]
    wallet = await gateway_balance(client, gateway_headers, "alice")
    assert (wallet["balance_micros"], wallet["held_micros"]) == (1_000_000, 100_000)


async def test_a_capture_with_a_control_character_is_invalid_and_applies_nothing(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    await reserve(client, gateway_headers, "alice", "h-1", 100_000)
    response = await captures(
        client,
        gateway_headers,
        [
            usage("h-1\x00", 1),
            usage("h-1", 1, model="gpt\x07"),
            usage("h-1", 1, metadata={"note": "a\x00b"}),
            usage(" h-1", 1),
        ],
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results[:3]] == ["invalid"] * 3
    assert [r["errors"][0]["field"] for r in results[:3]] == ["hold_id", "model", "metadata"]
    # Surrounding whitespace is stripped, as from the single capture's path parameter.
    assert (results[3]["status"], results[3]["hold_id"]) == ("captured", "h-1")
    wallet = await gateway_balance(client, gateway_headers, "alice")
    assert (wallet["balance_micros"], wallet["held_micros"]) == (999_999, 0)


async def test_a_batch_needs_the_holds_scope(
    client: httpx.AsyncClient, session_maker: Maker
) -> None:
    from app.auth.service_tokens import create_service_token
    from app.db import session_scope

    async with session_scope(session_maker) as session:
        _, token = await create_service_token(session, "usage-only", scopes=["usage"])
    response = await client.post(
        URL, json={"captures": [usage("h-1", 1)]}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 403
    assert response.json()["required_scope"] == "holds"


def test_the_answer_written_as_it_is_equals_the_models_serialization() -> None:
    """`capture_batch_json` writes an all-captured answer without validating it: it must be
    what `HoldCaptureBatchOut` serializes the same answer to."""
    from datetime import UTC, datetime

    from app.ledger.holds import HoldResult
    from app.ledger.holds_repository import HoldRow
    from app.ledger.repository import WalletRow
    from app.usage.router import capture_batch_json
    from app.usage.service import CaptureItem

    at = datetime(2026, 12, 8, 1, 2, 3, 456789, tzinfo=UTC)
    items = [
        CaptureItem(
            f"h-{n}",
            HoldResult(
                HoldRow(f"h-{n}", "alice", 10_000, "captured", 7_000, "r", "c", at, at, at),
                WalletRow("acct", "alice", 5_000 - n, 0),
                n == 1,
                None if n else 3_000,
            ),
        )
        for n in range(3)
    ]
    written = capture_batch_json(items)
    model = HoldCaptureBatchOut.model_validate_json(written)
    assert model.__pydantic_serializer__.to_json(model) == written


@pytest.mark.parametrize(
    "settings_overrides",
    [{"database_pool_size": RACE_POOL_SIZE, "service_token_cache_seconds": 60}],
)
async def test_concurrent_batches_over_the_same_holds_capture_each_once(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Maker,
) -> None:
    """Eight batches at once, each naming 30 of 40 holds (each hold in six of them, with the
    same body, in a different order): each hold is captured exactly once, every other naming a
    replay; and two batches naming the same holds with other bodies: one captures each hold,
    the other is refused a conflict."""
    users = [f"racer-{i}" for i in range(8)]
    for user in users:
        await deposit(client, admin_headers, user, 1_000_000)
    holds = [(f"race-{n}", users[n % len(users)]) for n in range(40)]
    for hold_id, user in holds:
        await reserve(client, gateway_headers, user, hold_id, 20_000)
    rng = random.Random(22)
    batches = []
    for b in range(8):
        chosen = [holds[(b * 5 + k) % 40] for k in range(30)]
        rng.shuffle(chosen)
        batches.append([usage(hold_id, 15_000) for hold_id, _ in chosen])
    answers = await together(
        [functools.partial(captures, client, gateway_headers, items) for items in batches]
    )
    assert {a.status_code for a in answers} == {200}
    outcomes = Counter((r["hold_id"], r["status"]) for a in answers for r in a.json()["results"])
    for hold_id, _ in holds:
        assert outcomes[(hold_id, "captured")] == 1, hold_id
        assert outcomes[(hold_id, "replayed")] == 5, hold_id
    for user in users:
        wallet = await gateway_balance(client, gateway_headers, user)
        assert (wallet["balance_micros"], wallet["held_micros"]) == (1_000_000 - 5 * 15_000, 0)

    # The same holds, other bodies: each is captured by one batch, and a conflict in the other.
    rivals = [(f"rival-{n}", users[n % len(users)]) for n in range(16)]
    for hold_id, user in rivals:
        await reserve(client, gateway_headers, user, hold_id, 20_000)
    first = [usage(hold_id, 10_000) for hold_id, _ in rivals]
    second = [usage(hold_id, 12_000) for hold_id, _ in reversed(rivals)]
    answers = await together(
        [
            lambda: captures(client, gateway_headers, first),
            lambda: captures(client, gateway_headers, second),
        ]
    )
    won: dict[str, int] = {}
    for answer in answers:
        for r in answer.json()["results"]:
            if r["status"] == "captured":
                assert r["hold_id"] not in won
                won[r["hold_id"]] = r["hold"]["captured_micros"]
            else:
                assert r["status"] == "idempotency_conflict", r
    assert sorted(won) == sorted(hold_id for hold_id, _ in rivals)
    async with session_maker() as session:
        records = (
            await session.execute(
                text(
                    "SELECT request_id, count(*), sum(amount_micros) FROM usage_records"
                    " WHERE request_id LIKE 'race-%' OR request_id LIKE 'rival-%'"
                    " GROUP BY request_id"
                )
            )
        ).all()
        assert {r[0]: r[1] for r in records} == {h: 1 for h, _ in holds + rivals}
        assert {r[0]: r[2] for r in records if r[0].startswith("rival-")} == won
        assert await verify_ledger(session) == []
