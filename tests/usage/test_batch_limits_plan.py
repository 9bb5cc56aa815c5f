"""A batch's statement reaches the spend limits of its users through the table's unique index,
one probe per (user, scope), whatever the planner knows of the table: on a seq scan,
`user_id = ANY(the batch's users)` compared every limit with every user of the batch (a
thousand by a thousand: 17 ms of a 45 ms batch of 1,000 events, `bench.batch_costs`)."""

from __future__ import annotations

from typing import Any

from app.limits.periods import Windows
from app.models.base import utcnow
from app.usage import repository
from app.usage.store import UsageDebit
from testing.helpers.plans import generic_plan_scans


async def test_a_batch_probes_its_users_limits_by_index(app: Any) -> None:
    # As `make bench` has them: a limit for every user's key, freshly written (unanalyzed),
    # which the batch's events do not name: the old plan scanned the table.
    users = sorted(f"user-{i}" for i in range(1000))
    debits = [UsageDebit(user, f"r-{user}", 7000, "d" * 64, None) for user in users]
    now = utcnow()
    args = (*repository._event_columns(debits), now, *Windows.at(now), "txn_x", "usage-batch:x")
    async with app.state.usage_store.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO spend_limits (id, user_id, scope, limit_micros, period, window_start, "
            "spent_micros, created_at, updated_at) "
            "SELECT 'lim_' || i, 'user-' || i, 'key:k', 10, 'month', now(), "
            "0, now(), now() FROM generate_series(0, 999) i"
        )
        scans = await generic_plan_scans(
            conn, repository._sql().batch, *args, tables=("spend_limits",)
        )
    # The limits probed by the unique index; the counters written (`spend`) by the primary key
    # (`= ANY` of their ids: an index scan or a bitmap of it), never a scan of the table.
    assert ("Index Scan", "spend_limits", "uq_spend_limits_user_id") in scans
    assert {kind for kind, _, _ in scans} <= {"Index Scan", "Bitmap Heap Scan"}, scans
