"""What a reserve, a capture and a usage debit each cost PostgreSQL, one at a time on one
connection: rows written, index insertions, heap-only (HOT) updates, and the mean time of the
statement as the client sees it (a round trip on loopback included). Not a load test: a probe
to see where a hold pair's cost goes, run against its own database.

    python -m bench.hold_costs [--operations 2000] [--batch 1]

With `--batch N` (> 1), the operations go N at a time as the gateway sends those that wait past
its bound of statements in flight (`debit_batch`, `reserve_batch`, `capture_batch`): the figures
are still per operation.

Index insertions are counted from the statistics and the catalog: each inserted row and each
non-HOT update enters every index of its table (a partial index only when the new row satisfies
its predicate, which `pg_stat_user_indexes` cannot tell, so the probe says which indexes are
partial).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from bench.run import WALLETS, dsn, prepare_service_database, scratch_database, sqlalchemy_url

_STATS = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del,
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = s.relid) AS indexes,
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = s.relid AND i.indpred IS NOT NULL)
           AS partial
FROM pg_stat_user_tables s
"""


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process on this machine (a PostgreSQL backend on loopback)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _stats(url: str) -> dict[str, tuple[int, ...]]:
    conn = await asyncpg.connect(url)
    try:
        await asyncio.sleep(1.2)  # backends flush their counters at most once a second
        return {r["relname"]: tuple(r.values())[1:] for r in await conn.fetch(_STATS)}
    finally:
        await conn.close()


def _delta(before: dict[str, tuple[int, ...]], after: dict[str, tuple[int, ...]], n: int) -> str:
    lines = []
    total_rows = total_index = 0.0
    for name, now in sorted(after.items()):
        was = before.get(name, (0, 0, 0, 0, now[4], now[5]))
        ins, upd, hot, dele = (now[i] - was[i] for i in range(4))
        if not (ins or upd or dele):
            continue
        indexes, partial = now[4], now[5]
        index_ins = (ins + upd - hot) * indexes
        total_rows += ins + upd + dele
        total_index += index_ins
        lines.append(
            f"    {name}: {ins / n:.2f} inserted, {upd / n:.2f} updated ({hot / n:.2f} HOT), "
            f"{dele / n:.2f} deleted; ≤ {index_ins / n:.2f} index insertions "
            f"({indexes} indexes, {partial} partial)"
        )
    lines.insert(
        0, f"  rows written {total_rows / n:.2f}, index insertions ≤ {total_index / n:.2f}"
    )
    return "\n".join(lines)


async def main(operations: int, settings: dict[str, str], batch: int = 1) -> None:
    from app.ledger.holds_repository import HoldCapture, HoldRequest
    from app.usage.repository import UsageStore
    from app.usage.store import UsageDebit
    from app.wiring import wire

    wire()
    name = f"billing_holdcost_{secrets.token_hex(3)}"
    url = dsn(name)
    async with scratch_database(name):
        await prepare_service_database(sqlalchemy_url(url), 1)
        tag = secrets.token_hex(3)

        def reserve(i: int) -> HoldRequest:
            return HoldRequest(f"user-{i % WALLETS}", f"h-{tag}-{i}", 10_000, 60, "r" * 64)

        def capture(i: int) -> HoldCapture:
            return HoldCapture(
                f"h-{tag}-{i}",
                7000,
                "c" * 64,
                {"model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 300},
                2.0,
            )

        def debit(i: int) -> UsageDebit:
            return UsageDebit(
                user_id=f"user-{i % WALLETS}",
                request_id=f"d-{tag}-{i}",
                amount_micros=7000,
                request_hash="d" * 64,
                details={"model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 300},
            )

        async def run(
            label: str,
            op: Callable[[UsageStore, int], Awaitable[Any]],
            start: int,
            ops: Callable[[UsageStore, range], Awaitable[Any]],
        ) -> None:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=1, server_settings=settings)
            store = UsageStore(pool)
            for i in range(start - 200, start, batch):  # warm: statement cache, generic plans
                await (op(store, i) if batch == 1 else ops(store, range(i, i + batch)))
            await store.close()
            before = await _stats(url)
            pool = await asyncpg.create_pool(url, min_size=1, max_size=1, server_settings=settings)
            store = UsageStore(pool)
            async with pool.acquire() as conn:
                backend = conn.get_server_pid()
            cpu = _cpu_seconds(backend)
            began = time.perf_counter()
            for i in range(start, start + operations, batch):
                await (op(store, i) if batch == 1 else ops(store, range(i, i + batch)))
            took = time.perf_counter() - began
            cpu = _cpu_seconds(backend) - cpu
            await store.close()
            after = await _stats(url)
            each = "statement" if batch == 1 else f"operation (batches of {batch})"
            print(
                f"{label}: {cpu / operations * 1e6:.0f} µs of its backend's CPU per {each},"
                f" {took / operations * 1e6:.0f} µs per operation on the wire"
            )
            print(_delta(before, after, operations))

        for start in (1_000_000, 2_000_000):
            await run(
                "debit",
                lambda s, i: s.debit(debit(i)),
                start,
                lambda s, r: s.debit_batch(sorted((debit(i) for i in r), key=lambda d: d.user_id)),
            )
            await run(
                "reserve",
                lambda s, i: s.reserve(reserve(i)),
                start,
                lambda s, r: s.reserve_batch([reserve(i) for i in r]),
            )
            # Its warm-up captures the holds the reserve's warm-up reserved.
            await run(
                "capture",
                lambda s, i: s.capture(capture(i)),
                start,
                lambda s, r: s.capture_batch([capture(i) for i in r]),
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--operations", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1, help="operations per statement")
    parser.add_argument(
        "--generic", action="store_true", help="the connections plan_cache_mode=force_generic_plan"
    )
    args = parser.parse_args()
    from app.usage.repository import SERVER_SETTINGS

    # The gateway's own connections' settings (JIT off), as the service runs its statements.
    generic = {"plan_cache_mode": "force_generic_plan"} if args.generic else {}
    asyncio.run(main(args.operations, SERVER_SETTINGS | generic, args.batch))
