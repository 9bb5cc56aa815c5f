"""The captures' batch statement reaches its holds and their spend limits by index, one probe per
hold and per (user, scope), whatever the planner knew of the tables when the connection planned
it: its generic plan is kept for the connection's life, and `id = ANY(the batch's ids)` was
planned as a seq scan of a holds table a few pages long, which every batch then paid in full
as the table grew (~485 pages read per batch of 14 under `make bench`'s holds)."""

from __future__ import annotations

from typing import Any

import pytest

from app.limits.periods import Windows
from app.models.base import utcnow
from app.usage import repository
from testing.helpers.plans import generic_plan_scans


@pytest.mark.parametrize("holds", [0, 300])
async def test_a_capture_batch_probes_its_holds_and_limits_by_index(app: Any, holds: int) -> None:
    now = utcnow()
    ids = [f"h-{i}" for i in range(5)]
    args = (
        ids,
        [7_000] * 5,
        ["c" * 64] * 5,
        "txn_0",
        [None] * 5,
        [None] * 5,
        [None] * 5,
        [None] * 5,
        2.0,
        now,
        *Windows.at(now),
    )
    async with app.state.usage_store.pool.acquire() as conn:
        rolled_back = conn.transaction()  # these rows are the plan's only: none stays
        await rolled_back.start()
        # A small table (none, or a few pages), fresh (unanalyzed), and limits on every user.
        await conn.execute(
            "INSERT INTO holds (id, account_id, user_id, amount_micros, status, request_hash, "
            "expires_at, created_at) SELECT 'old-' || i, 'acc_' || i, 'user-' || i, 10, "
            "'active', 'h', now() + interval '1 hour', now() FROM generate_series(1, $1) i",
            holds,
        )
        await conn.execute(
            "INSERT INTO spend_limits (id, user_id, scope, limit_micros, period, window_start, "
            "spent_micros, created_at, updated_at) "
            "SELECT 'lim_' || i, 'user-' || i, 'account', 10, 'month', now(), "
            "0, now(), now() FROM generate_series(0, 999) i"
        )
        scans = await generic_plan_scans(
            conn, repository._sql().capture_batch, *args, tables=("holds", "spend_limits")
        )
        await rolled_back.rollback()
    assert ("Index Scan", "holds", "pk_holds") in scans
    assert ("Index Scan", "spend_limits", "uq_spend_limits_user_id") in scans
    assert {kind for kind, _, _ in scans} == {"Index Scan"}, scans
