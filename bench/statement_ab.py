"""`python -m bench.statement_ab A.sql`: the usage debit statement of another version of the code
(A, written to a file by that checkout: `_sql().debit` after `app.wiring.wire()`) against this
one's (B), at the database only, interleaved in one run so the machine's drift hits both alike.

B is what `UsageStore.debit` sends: `_sql().debit`, and when that answers `lots` (the wallet
tracks credit lots; nothing written) `_sql().debit_head` (the first live lot alone), and when
that answers `lots` too `_sql().debit_lots` (over all lots), with the same arguments;
`debit_head` runs first for the wallets answered `lots` before (the store's hint; the first B3
round learns the three-lot wallets, as a gateway process does on each one's first debit). L is
`_sql().debit_lots` alone, the debit as issue 21 left it (every wallet through the lot CTEs).

One database migrated by this code; wallets `user-0..999` funded with one never-expiring paid
lot (what the code before lots had: a balance), `lot3-0..999` with three live lots (a grant
expiring in 30 days, a top-up expiring in a year, and the paid lot). Rounds of A (one-lot
wallets), B (one-lot wallets), B3 (three-lot wallets) and L (one-lot wallets), each `--seconds`
long with `--connections` connections debiting random wallets, in the order A B B3 L L B3 B A,
repeated. A's statement runs unchanged on this schema (lots only add columns and tables).
Prints each round and the ratios B÷A, B3÷A and L÷A of the summed throughputs."""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import time
from pathlib import Path

import asyncpg

from bench.explain_debit import debit_args
from bench.run import dsn, prepare_service_database, scratch_database, sqlalchemy_url


async def _load(
    pool: asyncpg.Pool,
    statements: list[str],
    prefix: str,
    seconds: float,
    conns: int,
    lot_wallets: set[str] | None = None,
) -> int:
    """Debits of random `prefix` wallets for `seconds`: each runs `statements` in turn while
    the last one answered `lots`; with `lot_wallets`, as `UsageStore.debit` does, a user in it
    starts at the second statement, and is added (answered `lots`) or removed (`tracks_lots`
    false) as the store's hint is."""

    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        async with pool.acquire() as conn:
            while time.monotonic() < stop:
                user = f"{prefix}{random.randrange(1000)}"
                args = debit_args(user)
                first = 1 if lot_wallets is not None and user in lot_wallets else 0
                for sql in statements[first:]:
                    row = await conn.fetchrow(sql, *args)
                    if row is None or row["outcome"] != "lots":
                        break
                    if lot_wallets is not None:
                        lot_wallets.add(user)
                if lot_wallets is not None and row is not None and row.get("tracks_lots") is False:
                    lot_wallets.discard(user)
                if row is None or row["outcome"] != "applied":
                    raise RuntimeError(f"debit not applied: {dict(row or {})}")
                done += 1

    await asyncio.gather(*(worker() for _ in range(conns)))
    return done


async def _fund_three(url: str) -> None:
    from datetime import timedelta

    from app.db import create_engine, create_session_maker, session_scope
    from app.ledger import lots
    from app.models.base import utcnow
    from app.models.ledger import LotSource, Txn
    from bench.run import FUNDS_MICROS, app_settings

    engine = create_engine(app_settings(url))
    now = utcnow()
    funding = [
        (LotSource.ADJUSTMENT, "adjustment", "adjustments", None),
        (LotSource.GRANT, "grant", "promotions", now + timedelta(days=30)),
        (LotSource.PURCHASE, "topup", "stripe", now + timedelta(days=365)),
    ]
    try:
        maker = create_session_maker(engine)
        for start in range(0, 1000, 250):
            async with session_scope(maker) as session:
                for i in range(start, start + 250):
                    for source, kind, account, expires_at in funding:
                        await lots.credit(
                            session,
                            Txn(f"{kind}:lot3-{i}", kind),
                            user_id=f"lot3-{i}",
                            amount_micros=FUNDS_MICROS,
                            source=source,
                            account=account,
                            expires_at=expires_at,
                        )
    finally:
        await engine.dispose()


async def main(
    a_sql: str, seconds: float, conns: int, repeats: int, settings: dict[str, str]
) -> None:
    from app.usage.repository import _sql
    from app.wiring import wire

    wire()
    b_sql, head_sql, lots_sql = _sql().debit, _sql().debit_head, _sql().debit_lots
    name = f"billing_stmt_ab_{secrets.token_hex(3)}"
    async with scratch_database(name):
        await prepare_service_database(sqlalchemy_url(dsn(name)))
        await _fund_three(sqlalchemy_url(dsn(name)))
        pool = await asyncpg.create_pool(
            dsn(name), min_size=conns, max_size=conns, server_settings=settings
        )
        rounds = {
            "A": ([a_sql], "user-"),
            "B": ([b_sql, head_sql, lots_sql], "user-"),
            "B3": ([b_sql, head_sql, lots_sql], "lot3-"),
            "L": ([lots_sql], "user-"),
        }
        totals = {key: 0 for key in rounds}
        lot_wallets: set[str] = set()  # the store's hint, as one gateway process keeps it
        # Warm-up (prepares, caches).
        await _load(pool, [b_sql, head_sql, lots_sql], "lot3-", 1, conns)
        await _load(pool, [a_sql], "user-", 1, conns)
        for _ in range(repeats):
            for key in ("A", "B", "B3", "L", "L", "B3", "B", "A"):
                statements, prefix = rounds[key]
                hint = lot_wallets if key.startswith("B") else None
                count = await _load(pool, statements, prefix, seconds, conns, hint)
                totals[key] += count
                print(f"{key:>2}: {count / seconds:,.0f} debits/s", flush=True)
        await pool.close()
        print(
            f"sum A {totals['A']:,}, B {totals['B']:,}, B3 {totals['B3']:,}, L {totals['L']:,}:"
            f" B/A {totals['B'] / totals['A']:.3f}, B3/A {totals['B3'] / totals['A']:.3f},"
            f" L/A {totals['L'] / totals['A']:.3f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.statement_ab")
    parser.add_argument("a_sql", type=Path, help="the other version's debit statement")
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--set", action="append", default=[], help="a server setting, name=value (repeatable)"
    )
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    asyncio.run(
        main(args.a_sql.read_text(), args.seconds, args.connections, args.repeats, settings)
    )
