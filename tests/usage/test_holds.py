"""Holds: reserve, capture (less, more, zero), release, expiry; each resolved at most once."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.jobs.holds import expire_holds
from app.main import _jobs
from app.models.base import utcnow
from app.models.ledger import LedgerTransaction
from testing.helpers.ledger import debit, deposit, gateway_balance


async def reserve(
    client: httpx.AsyncClient, headers: dict[str, str], hold_id: str, amount: int, **extra: Any
) -> httpx.Response:
    return await client.post(
        "/v1/internal/holds",
        json={"user_id": "alice", "hold_id": hold_id, "amount_micros": amount, **extra},
        headers=headers,
    )


async def capture(
    client: httpx.AsyncClient, headers: dict[str, str], hold_id: str, amount: int, **extra: Any
) -> httpx.Response:
    return await client.post(
        f"/v1/internal/holds/{hold_id}/capture",
        json={"amount_micros": amount, **extra},
        headers=headers,
    )


async def release(
    client: httpx.AsyncClient, headers: dict[str, str], hold_id: str, **body: Any
) -> httpx.Response:
    return await client.post(
        f"/v1/internal/holds/{hold_id}/release", json=body or None, headers=headers
    )


async def ledger_count(session_maker: Any) -> int:
    async with session_maker() as session:
        return int((await session.execute(select(func.count(LedgerTransaction.id)))).scalar_one())


@pytest.fixture
async def funded(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)


@pytest.mark.usefixtures("funded")
async def test_a_hold_reserves_part_of_the_available_balance(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    response = await reserve(client, gateway_headers, "h-1", 300_000, ttl_seconds=120)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "active"
    assert body["amount_micros"] == 300_000
    assert body["captured_micros"] is None
    assert (body["balance_micros"], body["held_micros"], body["available_micros"]) == (
        1_000_000,
        300_000,
        700_000,
    )
    assert body["replayed"] is False
    # A debit sees only what is available.
    refused = await debit(client, gateway_headers, "alice", 700_001)
    assert refused.status_code == 402
    assert refused.json()["available_micros"] == 700_000


@pytest.mark.usefixtures("funded")
async def test_reserving_the_same_hold_again_is_a_replay_and_another_body_a_conflict(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    first = await reserve(client, gateway_headers, "h-1", 300_000)
    again = await reserve(client, gateway_headers, "h-1", 300_000)
    assert again.status_code == 200
    assert again.json()["replayed"] is True
    assert again.json()["expires_at"] == first.json()["expires_at"]
    # The default TTL, sent explicitly, is the same request.
    explicit = await reserve(client, gateway_headers, "h-1", 300_000, ttl_seconds=600)
    assert explicit.status_code == 200
    other = await reserve(client, gateway_headers, "h-1", 300_001)
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_conflict"
    assert (await gateway_balance(client, gateway_headers, "alice"))["held_micros"] == 300_000


@pytest.mark.usefixtures("funded")
async def test_a_hold_beyond_the_available_balance_is_402_and_records_nothing(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    response = await reserve(client, gateway_headers, "h-1", 1_000_001)
    assert response.status_code == 402
    assert response.json()["available_micros"] == 1_000_000
    # The id was not used up: a smaller retry under it succeeds.
    assert (await reserve(client, gateway_headers, "h-1", 1_000_000)).status_code == 201


async def test_a_hold_for_a_user_without_a_wallet_is_402(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    response = await reserve(client, gateway_headers, "h-1", 1)
    assert response.status_code == 402
    assert response.json()["available_micros"] == 0


@pytest.mark.usefixtures("funded")
async def test_capturing_less_than_held_charges_the_actual_and_releases_the_rest(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    user_headers: Any,
) -> None:
    await reserve(client, gateway_headers, "h-1", 300_000)
    response = await capture(
        client, gateway_headers, "h-1", 120_000, model="gpt-4o", input_tokens=10, output_tokens=5
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "captured"
    assert body["captured_micros"] == 120_000
    assert (body["balance_micros"], body["held_micros"], body["available_micros"]) == (
        880_000,
        0,
        880_000,
    )
    listing = await client.get("/v1/balance/transactions", headers=user_headers("alice"))
    usage = listing.json()["data"][0]
    assert usage["kind"] == "hold_capture"
    assert usage["amount"] == "-0.120000"
    assert (usage["model"], usage["input_tokens"], usage["output_tokens"]) == ("gpt-4o", 10, 5)


@pytest.mark.usefixtures("funded")
async def test_capturing_more_than_held_may_take_the_balance_negative_and_blocks_usage(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    await reserve(client, gateway_headers, "h-1", 900_000)
    assert (await debit(client, gateway_headers, "alice", 100_000)).status_code == 201
    response = await capture(client, gateway_headers, "h-1", 1_500_000)
    assert response.status_code == 200
    assert response.json()["balance_micros"] == -600_000
    assert response.json()["held_micros"] == 0
    refused = await debit(client, gateway_headers, "alice", 1)
    assert refused.status_code == 402
    assert refused.json()["available_micros"] == -600_000
    assert (await reserve(client, gateway_headers, "h-2", 1)).status_code == 402


@pytest.mark.usefixtures("funded")
async def test_a_capture_past_twice_its_hold_is_422_and_applies_nothing(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], session_maker: Any
) -> None:
    await reserve(client, gateway_headers, "h-1", 100_000)
    before = await ledger_count(session_maker)
    refused = await capture(client, gateway_headers, "h-1", 200_001, model="m")
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["code"] == "capture_exceeds_hold"
    assert (problem["hold_amount_micros"], problem["max_capture_micros"]) == (100_000, 200_000)
    assert await ledger_count(session_maker) == before
    wallet = await gateway_balance(client, gateway_headers, "alice")
    assert (wallet["balance_micros"], wallet["held_micros"]) == (1_000_000, 100_000)
    # The hold is still active: a capture within the bound (here exactly at it) goes through.
    captured = await capture(client, gateway_headers, "h-1", 200_000, model="m")
    assert captured.status_code == 200, captured.text
    assert (captured.json()["balance_micros"], captured.json()["held_micros"]) == (800_000, 0)


@pytest.mark.usefixtures("funded")
@pytest.mark.parametrize("settings_overrides", [{"capture_max_hold_multiple": 1}])
async def test_the_capture_bound_is_a_setting(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], session_maker: Any
) -> None:
    await reserve(client, gateway_headers, "h-1", 100_000)
    before = await ledger_count(session_maker)
    refused = await capture(client, gateway_headers, "h-1", 100_001)
    assert refused.status_code == 422
    assert refused.json()["code"] == "capture_exceeds_hold"
    assert await ledger_count(session_maker) == before
    assert (await capture(client, gateway_headers, "h-1", 100_000)).status_code == 200


@pytest.mark.usefixtures("funded")
async def test_capturing_zero_releases_the_hold_without_a_ledger_transaction(
    client: httpx.AsyncClient, gateway_headers: dict[str, str], session_maker: Any
) -> None:
    await reserve(client, gateway_headers, "h-1", 300_000)
    before = await ledger_count(session_maker)
    response = await capture(client, gateway_headers, "h-1", 0)
    assert response.status_code == 200
    assert response.json()["status"] == "captured"
    assert response.json()["captured_micros"] == 0
    assert response.json()["available_micros"] == 1_000_000
    assert await ledger_count(session_maker) == before


@pytest.mark.usefixtures("funded")
async def test_a_capture_is_applied_once_and_repeats_answer_the_original(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    await reserve(client, gateway_headers, "h-1", 300_000)
    first = await capture(client, gateway_headers, "h-1", 250_000, model="m")
    again = await capture(client, gateway_headers, "h-1", 250_000, model="m")
    assert again.status_code == 200
    assert again.json()["replayed"] is True
    assert again.json()["resolved_at"] == first.json()["resolved_at"]
    assert again.json()["balance_micros"] == 750_000
    other = await capture(client, gateway_headers, "h-1", 250_001, model="m")
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_conflict"
    released = await release(client, gateway_headers, "h-1")
    assert released.status_code == 409
    assert released.json()["code"] == "invalid_state"
    assert released.json()["hold_status"] == "captured"
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 750_000


@pytest.mark.usefixtures("funded")
async def test_a_release_returns_the_reservation_once(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    await reserve(client, gateway_headers, "h-1", 300_000)
    first = await release(client, gateway_headers, "h-1", reason="client went away")
    assert first.status_code == 200
    assert first.json()["status"] == "released"
    assert first.json()["available_micros"] == 1_000_000
    again = await release(client, gateway_headers, "h-1", reason="client went away")
    assert again.json()["replayed"] is True
    assert again.json()["held_micros"] == 0
    assert (await release(client, gateway_headers, "h-1")).status_code == 409
    late = await capture(client, gateway_headers, "h-1", 1)
    assert late.status_code == 409
    assert late.json()["code"] == "invalid_state"
    assert (await gateway_balance(client, gateway_headers, "alice"))["balance_micros"] == 1_000_000


async def test_an_unknown_hold_is_404(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    assert (await capture(client, gateway_headers, "nope", 1)).status_code == 404
    assert (await release(client, gateway_headers, "nope")).status_code == 404


@pytest.mark.usefixtures("funded")
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/internal/holds", {"amount_micros": 0}, "amount_micros"),
        ("/v1/internal/holds", {"ttl_seconds": 0}, "ttl_seconds"),
        ("/v1/internal/holds", {"ttl_seconds": 3601}, "ttl_seconds"),
        ("/v1/internal/holds", {"extra": True}, "extra"),
        ("/v1/internal/holds/h-1/capture", {"amount_micros": -1}, "amount_micros"),
        ("/v1/internal/holds/h-1/capture", {"amount_micros": 1, "x": 1}, "x"),
        ("/v1/internal/holds/h-1/release", {"reason": "r" * 201}, "reason"),
    ],
)
async def test_invalid_hold_requests_are_422(
    client: httpx.AsyncClient,
    gateway_headers: dict[str, str],
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    base = {"user_id": "alice", "hold_id": "h-1", "amount_micros": 1}
    payload = base | body if path.endswith("holds") else body
    response = await client.post(path, json=payload, headers=gateway_headers)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


@pytest.mark.usefixtures("funded")
@pytest.mark.parametrize(
    "settings_overrides", [{"hold_max_ttl_seconds": 60, "hold_default_ttl_seconds": 30}]
)
async def test_the_ttl_is_capped_by_the_setting(
    client: httpx.AsyncClient, gateway_headers: dict[str, str]
) -> None:
    response = await reserve(client, gateway_headers, "h-1", 1, ttl_seconds=61)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "ttl_seconds"
    assert (await reserve(client, gateway_headers, "h-1", 1, ttl_seconds=60)).status_code == 201


@pytest.mark.usefixtures("funded")
async def test_an_expired_hold_is_released_once_and_cannot_be_captured(
    app: Any, client: httpx.AsyncClient, gateway_headers: dict[str, str], session_maker: Any
) -> None:
    await reserve(client, gateway_headers, "short", 200_000, ttl_seconds=5)
    await reserve(client, gateway_headers, "long", 300_000, ttl_seconds=60)
    assert await expire_holds(app.state.usage_store) == 0  # nothing is due yet
    later = utcnow() + timedelta(seconds=10)
    assert await expire_holds(app.state.usage_store, now=later) == 1
    assert await expire_holds(app.state.usage_store, now=later) == 0
    wallet = await gateway_balance(client, gateway_headers, "alice")
    assert (wallet["balance_micros"], wallet["held_micros"]) == (1_000_000, 300_000)
    late = await capture(client, gateway_headers, "short", 1)
    assert late.status_code == 409
    assert late.json()["hold_status"] == "expired"
    assert (await capture(client, gateway_headers, "long", 300_000)).status_code == 200


@pytest.mark.usefixtures("funded")
async def test_the_expiry_job_works_through_more_holds_than_one_batch(
    app: Any, client: httpx.AsyncClient, gateway_headers: dict[str, str], session_maker: Any
) -> None:
    for i in range(7):
        assert (await reserve(client, gateway_headers, f"h-{i}", 1_000)).status_code == 201
    later = utcnow() + timedelta(seconds=601)  # past the default TTL
    assert await expire_holds(app.state.usage_store, now=later, batch_size=3) == 7
    assert (await gateway_balance(client, gateway_headers, "alice"))["held_micros"] == 0


@pytest.mark.usefixtures("funded")
async def test_two_expiry_jobs_at_once_release_an_expired_hold_once(
    app: Any, client: httpx.AsyncClient, gateway_headers: dict[str, str], session_maker: Any
) -> None:
    await reserve(client, gateway_headers, "h-1", 400_000, ttl_seconds=1)
    later = utcnow() + timedelta(seconds=5)
    counts = await asyncio.gather(
        expire_holds(app.state.usage_store, now=later),
        expire_holds(app.state.usage_store, now=later),
    )
    assert sorted(counts) == [0, 1]
    wallet = await gateway_balance(client, gateway_headers, "alice")
    assert (wallet["balance_micros"], wallet["held_micros"]) == (1_000_000, 0)


def test_the_expiry_job_runs_in_every_instance(app: Any) -> None:
    assert [job.name for job in _jobs(app, app.state.settings)].count("expire_holds") == 1
