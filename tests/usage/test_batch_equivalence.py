"""A batch gives exactly the per-event results of applying its events one by one.

Hypothesis draws initial balances, debits applied before the batch, and a batch with duplicates
(same id and body: replays), reused ids with other bodies (conflicts), unknown users and amounts
that run balances out midway. The batch runs through `service.record_batch` on the store the app
uses (PostgreSQL: the set-based statements); the same events run one by one through
`service.record_usage` on a twin set of wallets (other user and request ids, same amounts) in the
order the batch promises: by user id, each user's events in input order. Every result, and the
wallets after, must agree. Derandomized, so CI runs the same examples.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.adjustments.schemas import AdjustmentIn
from app.adjustments.service import adjust_wallet
from app.config import Settings
from app.db import create_engine, create_session_maker, session_scope
from app.errors import IdempotencyConflict, InsufficientBalance
from app.ledger.verify import verify_ledger
from app.usage import service
from app.usage.repository import UsageStore
from app.usage.router import batch_out as render_batch
from app.usage.schemas import UsageIn
from testing.fixtures.app import Database

T = TypeVar("T")

USERS = ["u1", "u2", "u3", "nobody"]  # "nobody" never gets a wallet
EVENT = st.tuples(
    st.sampled_from(USERS),
    st.integers(0, 11),  # request ids: few, so they repeat
    st.sampled_from([1, 70_000, 150_000, 400_000]),
    st.sampled_from([None, "gpt-4o-mini"]),
)


@dataclass
class Runner:
    loop: asyncio.AbstractEventLoop
    settings: Settings
    store: UsageStore
    maker: Any

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


def _event(prefix: str, raw: tuple[str, int, int, str | None]) -> UsageIn:
    user, rid, amount, model = raw
    return UsageIn(
        user_id=f"{prefix}-{user}",
        request_id=f"{prefix}-r{rid}",
        amount_micros=amount,
        model=model,
    )


async def _fund(runner: Runner, prefix: str, balances: list[int]) -> None:
    for user, amount in zip(USERS[:3], balances, strict=True):
        if amount:
            body = AdjustmentIn(
                amount_micros=amount, reason="fund", idempotency_key=uuid.uuid4().hex
            )
            async with session_scope(runner.maker) as session:
                await adjust_wallet(
                    session, runner.settings, actor="t", user_id=f"{prefix}-{user}", body=body
                )


async def _one_by_one(runner: Runner, event: UsageIn) -> dict[str, Any]:
    try:
        out = await service.record_usage(runner.store, runner.settings, event)
    except InsufficientBalance as refused:
        return {
            "status": "insufficient_balance",
            "available_micros": refused.extra["available_micros"],
        }
    except IdempotencyConflict:
        return {"status": "conflict"}
    return {
        "status": "replayed" if out.replayed else "applied",
        "request_id": event.request_id,
        "transaction_id": out.transaction_id,
        "balance_micros": out.wallet.balance_micros if out.wallet else 0,
        "held_micros": out.wallet.held_micros if out.wallet else 0,
    }


def _comparable(result: dict[str, Any], origin: dict[tuple[str, str], int]) -> dict[str, Any]:
    """A result with its transaction id replaced by the index of the event that made it (a
    batch's events share their ledger transaction: the event is its id in that transaction)."""
    keep = {k: v for k, v in result.items() if k in ("status", "balance_micros", "held_micros")}
    if result["status"] == "insufficient_balance":
        keep = {"status": result["status"], "available_micros": result["available_micros"]}
    elif result["status"] in ("applied", "replayed"):
        keep["made_by"] = origin.get((result["transaction_id"], result["request_id"]), -1)
    else:
        keep = {"status": result["status"]}
    return keep


async def _wallets(runner: Runner, prefix: str) -> dict[str, tuple[int, int]]:
    found = {}
    for user in USERS:
        wallet = await runner.store.wallet(f"{prefix}-{user}")
        if wallet is not None:
            found[user] = (wallet.balance_micros, wallet.held_micros)
    return found


def check_equivalence(
    runner: Runner,
    balances: list[int],
    before: list[tuple[str, int, int, str | None]],
    batch: list[tuple[str, int, int, str | None]],
) -> None:
    tag = uuid.uuid4().hex[:8]
    a, b = f"a{tag}", f"b{tag}"  # the batch's world, the one-by-one world

    async def scenario() -> None:
        for prefix in (a, b):
            await _fund(runner, prefix, balances)
            for raw in before:
                await _one_by_one(runner, _event(prefix, raw))

        batch_out = render_batch(
            await service.record_batch(
                runner.store, runner.settings, [_event(a, raw) for raw in batch]
            )
        )
        batch_results = [r.model_dump() for r in batch_out.results]
        assert [r["index"] for r in batch_results] == list(range(len(batch)))

        order = sorted(range(len(batch)), key=lambda i: batch[i][0])  # stable: by user id
        single: dict[int, dict[str, Any]] = {}
        for i in order:
            single[i] = await _one_by_one(runner, _event(b, batch[i]))

        # Transaction ids differ between the worlds; compare which event made each one.
        origin_a = {
            (r["transaction_id"], r["request_id"]): i
            for i, r in enumerate(batch_results)
            if r["status"] == "applied"
        }
        origin_b = {
            (r["transaction_id"], r["request_id"]): i
            for i, r in single.items()
            if r["status"] == "applied"
        }
        for i in range(len(batch)):
            got = _comparable(batch_results[i], origin_a)
            want = _comparable(single[i], origin_b)
            assert got == want, f"event {i} {batch[i]}: batch {got} != one by one {want}"
        assert batch_out.applied == sum(r["status"] == "applied" for r in single.values())
        assert await _wallets(runner, a) == await _wallets(runner, b)
        async with session_scope(runner.maker) as session:
            assert await verify_ledger(session) == []

    runner.run(scenario())


def test_a_batch_equals_its_events_applied_one_by_one(
    database: Database, settings: Settings
) -> None:
    loop = asyncio.new_event_loop()
    engine = create_engine(settings)
    maker = create_session_maker(engine)

    store = loop.run_until_complete(
        UsageStore.open(settings.database_url.get_secret_value(), max_size=2)
    )
    runner = Runner(loop, settings, store, maker)

    @hypothesis_settings(
        derandomize=True,
        database=None,
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        balances=st.lists(
            st.sampled_from([0, 100_000, 300_000, 1_000_000]), min_size=3, max_size=3
        ),
        before=st.lists(EVENT, max_size=4),
        batch=st.lists(EVENT, min_size=1, max_size=30),
    )
    def examples(
        balances: list[int],
        before: list[tuple[str, int, int, str | None]],
        batch: list[tuple[str, int, int, str | None]],
    ) -> None:
        check_equivalence(runner, balances, before, batch)

    try:
        examples()
    finally:
        loop.run_until_complete(runner.store.close())
        loop.run_until_complete(database.reset(engine))
        loop.run_until_complete(engine.dispose())
        loop.close()
