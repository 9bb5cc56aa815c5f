"""The usage reports on a month of 1,000,000 usage records (PostgreSQL).

    python -m bench.reports [--rows 1000000] [--runs 5]

1. creates a database, migrates it, and writes with `generate_series` one user's 1,000,000
   usage records spread over November 2026 (3 keys, 4 models) plus 250,000 of other users;
   then `VACUUM ANALYZE`, as autovacuum would after such an insert;
2. times the summary (`app.reports.service.summary`, the endpoint's own code) per `group_by`,
   the median of `--runs` runs, and prints its plan;
3. serves the app the way production does (bench/server.py's Uvicorn, one worker) and streams
   `GET /v1/usage/export` for the month, reading the CSV as it comes and checking its row count
   and amount total against SQL, while sampling the worker's RSS every 50 ms: the figure is the
   peak RSS growth over the worker's RSS before the request.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import secrets
import statistics
import sys
import time
from decimal import Decimal

import asyncpg
import httpx

from bench.run import ADMIN_DSN, JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET, dsn, sqlalchemy_url
from bench.server import RssSampler, Uvicorn, production_command

USER = "user-big"
START, END = "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"


def log(message: str) -> None:
    print(f"bench.reports: {message}", file=sys.stderr, flush=True)


async def prepare(database: str, rows: int) -> None:
    from app.config import Settings
    from app.db import create_engine
    from app.migrate import upgrade_head

    engine = create_engine(
        Settings(
            _env_file=None,
            environment="test",
            database_url=sqlalchemy_url(dsn(database)),
            jwt_secret=JWT_SECRET,
        )
    )
    try:
        await upgrade_head(engine)
    finally:
        await engine.dispose()
    conn = await asyncpg.connect(dsn(database))
    try:
        started = time.monotonic()
        for user, count in ((USER, rows), ("user-other-%s", rows // 4)):
            await conn.execute(
                """
                INSERT INTO usage_records (user_id, transaction_id, request_id, api_key_id,
                    model, input_tokens, output_tokens, amount_micros, balance_after_micros,
                    created_at)
                SELECT format($1, i % 50), 'txn_' || i, 'req-' || i,
                       (ARRAY['key-a', 'key-b', 'key-c'])[1 + i % 3],
                       (ARRAY['gpt-4o-mini', 'gpt-4o', 'claude-3-haiku', 'llama-3-70b'])[1 + i % 4],
                       100 + i % 900, 10 + i % 90, 1 + i % 20000, 10^12 - i,
                       timestamptz '2026-11-01 00:00:00+00'
                           + (i::float8 / $2) * interval '30 days'
                FROM generate_series(0, $2 - 1) AS i
                """,
                user,
                count,
            )
        await conn.execute("VACUUM ANALYZE usage_records")
        log(f"wrote {rows:,} + {rows // 4:,} usage records in {time.monotonic() - started:.1f} s")
    finally:
        await conn.close()


async def time_summary(database: str, runs: int) -> dict[str, float]:
    from datetime import datetime

    from app.config import Settings
    from app.db import create_engine, create_session_maker
    from app.models.base import utcnow
    from app.reports import service
    from app.schemas import as_utc

    start = as_utc(datetime.fromisoformat(START))
    end = as_utc(datetime.fromisoformat(END))
    engine = create_engine(
        Settings(
            _env_file=None,
            environment="test",
            database_url=sqlalchemy_url(dsn(database)),
            jwt_secret=JWT_SECRET,
        )
    )
    maker = create_session_maker(engine)
    medians = {}
    try:
        for group_by in ("day", "model", "api_key"):
            times = []
            for _ in range(runs + 1):
                async with maker() as session:
                    began = time.perf_counter()
                    out = await service.summary(
                        session, USER, start=start, end=end, group_by=group_by, now=utcnow()
                    )
                    times.append(time.perf_counter() - began)
            medians[group_by] = statistics.median(times[1:])  # the first warms the caches
            requests = sum(g.requests for g in out)
            log(
                f"summary group_by={group_by}: {len(out)} groups, {requests:,} requests, "
                f"median {medians[group_by] * 1000:.0f} ms of {runs} (all: "
                + ", ".join(f"{t * 1000:.0f}" for t in times[1:])
                + " ms)"
            )
    finally:
        await engine.dispose()
    conn = await asyncpg.connect(dsn(database))
    try:
        plan = await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT date_bin('1 day', created_at, "
            "timestamptz '2000-01-01 00:00:00+00'), count(*), "
            "sum(input_tokens), sum(output_tokens), sum(amount_micros) FROM usage_records "
            "WHERE user_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY 1",
            USER,
            start,
            end,
        )
        log("plan (group_by=day):\n    " + "\n    ".join(r[0] for r in plan))
    finally:
        await conn.close()
    return medians


def stream_export(database: str) -> tuple[int, int, int, float]:
    """Rows, amount total (micros), peak RSS growth (KiB) and seconds of the month's export."""
    from app.auth.jwt import mint_token
    from app.config import Settings

    env = {
        "BILLING_ENVIRONMENT": "production",
        "BILLING_DATABASE_URL": sqlalchemy_url(dsn(database)),
        "BILLING_JWT_SECRET": JWT_SECRET,
        "BILLING_JWT_ISSUER": JWT_ISSUER,
        "BILLING_JWT_AUDIENCE": JWT_AUDIENCE,
        "BILLING_JOBS_ENABLED": "false",
    }
    settings = Settings(
        _env_file=None,
        environment="test",
        jwt_secret=JWT_SECRET,
        jwt_issuer=JWT_ISSUER,
        jwt_audience=JWT_AUDIENCE,
    )
    token = mint_token(settings, USER)
    with Uvicorn("service", production_command(), env, 1) as server:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            # Warm the worker (imports, pools) so the baseline is the worker at rest.
            http.get("/v1/usage/summary", headers={"Authorization": f"Bearer {token}"})
            time.sleep(1)
            with RssSampler(server.pid, interval=0.05) as rss:
                time.sleep(0.3)
                baseline = rss.peak_total_kib
                rows = amount = 0
                began = time.perf_counter()
                with http.stream(
                    "GET",
                    "/v1/usage/export",
                    params={"from": START, "to": END},
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    response.raise_for_status()
                    pending = ""
                    header = True
                    for text in response.iter_text():
                        lines = (pending + text).split("\n")
                        pending = lines.pop()
                        for row in csv.reader(io.StringIO("\n".join(lines))):
                            if header:
                                header = False
                                continue
                            rows += 1
                            amount += int(Decimal(row[6]) * 1_000_000)
                elapsed = time.perf_counter() - began
            growth = rss.peak_total_kib - baseline
    return rows, amount, growth, elapsed


async def expected(database: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn(database))
    try:
        row = await conn.fetchrow(
            "SELECT count(*), sum(amount_micros) FROM usage_records WHERE user_id = $1",
            USER,
        )
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


async def create(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    database = f"billing_reports_{secrets.token_hex(3)}"
    asyncio.run(create(database))
    try:
        asyncio.run(prepare(database, args.rows))
        medians = asyncio.run(time_summary(database, args.runs))
        rows, amount, growth_kib, seconds = stream_export(database)
        want_rows, want_amount = asyncio.run(expected(database))
        ok = (rows, amount) == (want_rows, want_amount)
        log(
            f"export: {rows:,} rows in {seconds:.1f} s, amount total {amount} micros "
            f"({'equal to' if ok else 'DIFFERENT FROM'} SQL's {want_rows:,} rows, {want_amount}); "
            f"worker peak RSS growth {growth_kib / 1024:.1f} MB"
        )
        print(
            "summary medians: "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in medians.items())
            + f"; export {rows:,} rows, peak RSS growth {growth_kib / 1024:.1f} MB"
        )
        return 0 if ok else 1
    finally:
        asyncio.run(drop(database))


if __name__ == "__main__":
    raise SystemExit(main())
