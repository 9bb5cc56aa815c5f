"""What a usage batch costs PostgreSQL on a fresh database against one already holding
`--fill` events: two databases, 1,000-event batches over 1,000 wallets sent on one connection
to each in turn (ABBA over `--rounds`), the backend's CPU per event. A probe, not a load test.

    python -m bench.batch_growth [--fill 480000] [--rounds 6] [--sql STATEMENT]

`--sql` runs a statement on both databases first (e.g. `DROP INDEX ...`), to see which part of
the schema the difference comes from. On 2026-12-08 (AMD EPYC, 2 cores, shared): fresh 25.2 µs,
grown 30.2 µs per event, the grown one dearer in each of six rounds; with
`pk_usage_records` or `ix_ledger_entries_account_id_id` dropped from both, no gap (each event
then touches one per-user leaf fewer: in a grown table every user's newest rows have a leaf of
their own, in a fresh one a few hundred leaves hold everyone's).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets

import asyncpg

from bench.hold_costs import _cpu_seconds
from bench.run import WALLETS, dsn, prepare_service_database, scratch_database, sqlalchemy_url


async def main(fill: int, rounds: int, sql: str | None) -> None:
    from app.usage import repository
    from app.usage.repository import UsageStore
    from app.usage.store import UsageDebit
    from app.wiring import wire

    wire()
    tag = secrets.token_hex(3)
    details = {"model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 300}

    def batch(name: str, size: int = 1000) -> list[UsageDebit]:
        events = [
            UsageDebit(f"user-{i % WALLETS}", f"{tag}-{name}-{i}", 7000, "d" * 64, details)
            for i in range(size)
        ]
        return sorted(events, key=lambda d: d.user_id)

    names = [f"billing_growth_{secrets.token_hex(3)}" for _ in range(2)]
    async with scratch_database(names[0]), scratch_database(names[1]):
        stores: list[tuple[UsageStore, int]] = []
        for name in names:
            await prepare_service_database(sqlalchemy_url(dsn(name)), 1)
            if sql:
                conn = await asyncpg.connect(dsn(name))
                await conn.execute(sql)
                await conn.close()
            pool = await asyncpg.create_pool(
                dsn(name), min_size=1, max_size=1, server_settings=repository.SERVER_SETTINGS
            )
            async with pool.acquire() as conn:
                backend = conn.get_server_pid()
            stores.append((UsageStore(pool), backend))
        for b in range(fill // 8000):  # as group commit sends them: 8 requests as one batch
            await stores[1][0].debit_batch(batch(f"fill-{b}", 8000))
        per_event: list[list[float]] = [[], []]
        for r in range(rounds):
            for i in (0, 1) if r % 2 == 0 else (1, 0):
                store, backend = stores[i]
                for w in range(3):
                    await store.debit_batch(batch(f"warm-{r}-{i}-{w}"))
                made = [batch(f"m-{r}-{i}-{j}") for j in range(10)]
                cpu = _cpu_seconds(backend)
                for debits in made:
                    await store.debit_batch(debits)
                per_event[i].append((_cpu_seconds(backend) - cpu) / 10_000 * 1e6)
            print(f"round {r + 1}: fresh {per_event[0][-1]:.1f}, grown {per_event[1][-1]:.1f} µs")
        for label, values in (("fresh", per_event[0]), (f"grown ({fill:,} events)", per_event[1])):
            print(
                f"{label}: {sum(values) / len(values):.1f} µs of backend CPU per event "
                f"({min(values):.1f}-{max(values):.1f})"
            )
        for store, _ in stores:
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fill", type=int, default=480_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sql", help="a statement run on both databases first")
    args = parser.parse_args()
    asyncio.run(main(args.fill, args.rounds, args.sql))
