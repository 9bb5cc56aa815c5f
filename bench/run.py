"""`make bench` (`python -m bench`): the gateway's hot path and the webhook path under load, each
figure a ratio against a yardstick measured in the same run, since the machine is shared and
absolute numbers are noise.

What it does, on a fresh clone:

1. creates two PostgreSQL databases on `BILLING_BENCH_DATABASE_URL`'s server (default
   postgresql://postgres@127.0.0.1:5432/postgres): the service's, migrated, with 1,000 funded
   wallets `user-0..user-999` and a service token, and the yardstick's; drops them at the end;
2. starts the test Stripe peer, then the service as production starts it (the Dockerfile's
   `torouter-billing serve …`, `BILLING_ENVIRONMENT=production`, jobs off) with 1 worker and then
   one worker per core, and the yardstick (bench/yardstick.py) on the same uvicorn;
3. drives them from separate load-generator processes on 127.0.0.1: wrk 4.1 (Debian's package,
   installed with apt-get when missing and root; scripts in bench/lua/) for the closed-loop
   scenarios, bench/loadgen.py for the fixed rate and the webhook deliveries;
4. runs `torouter-billing ledger-verify` after every scenario and checks every webhook order ended
   paid exactly once;
5. measures what PostgreSQL does per event (bench/pgstats.py): rows and index insertions per
   debit, batch event, reserve + capture pair and credited webhook order, from its table
   statistics around a counted number of operations (`Bench.count_writes`); the CPU time of
   its backends over each scenario's measured window, per event; and the Stripe peer's reads
   per credited order;
6. reads the balance at a fixed rate alone, and again while usage debits run against the same
   worker (`--balance-writers` wrk connections);
7. prints one table and those figures, and writes them to bench/RESULTS.md (full runs only).

Exits 1 when an invariant breaks or a scenario got an answer it should not have (a non-2xx, a
batch event not applied, a hold not captured). Socket errors are reported, not fatal.

    python -m bench [--only usage,batch,holds,webhooks,balance,workers] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

from bench.pgstats import TICK, BackendCpu, Writes, backend_ticks, table_counters
from bench.roundtrips import WireCounter
from bench.server import (
    ROOT,
    RssSampler,
    StartFailed,
    Uvicorn,
    descendants,
    production_command,
    yardstick_command,
)
from bench.wrk import Load, LoadGeneratorError, ensure_wrk, run_wrk

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ADMIN_DSN = os.environ.get(
    "BILLING_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
).replace("postgresql+asyncpg://", "postgresql://", 1)
WALLETS = 1000
FUNDS_MICROS = 10**12
JWT_SECRET = secrets.token_urlsafe(48)
JWT_ISSUER = "https://id.bench.invalid/"
JWT_AUDIENCE = "torouter-billing-bench"
"""Production requires both (the service checks the tokens the harness mints carry them)."""
WEBHOOK_SECRET = "whsec_" + secrets.token_hex(24)
GROUPS = ("usage", "batch", "holds", "webhooks", "balance", "workers")

# Targets from issues 8 and 22 (1 worker unless said).
USAGE_TARGET = 1.2  # x yardstick, 1,000 wallets
HOT_TARGET = 0.8  # x yardstick, one hot wallet
BATCH_TARGET = 50_000  # events/s, batches of 1,000
HOLDS_TARGET = 0.8  # x the usage debit rate
HOLD_CAPTURE_BATCH = 50  # holds a wrk thread has reserved before it captures them in one batch
LIMIT_COST_TARGET = 0.9  # x the usage debit rate: a key limit may cost at most 10%
LIMITED_KEY = "bench-key"
WEBHOOKS_TARGET = 500  # events/s
BALANCE_RATE = 1000  # req/s
BALANCE_P99_MS = 10.0
RSS_TARGET_MB = 200  # per worker
X = "\u00d7"  # the multiplication sign of ratios


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def dsn(database: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + database


def sqlalchemy_url(plain_dsn: str) -> str:
    return plain_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


# ---------------------------------------------------------------------------------------------
# Databases


@contextlib.asynccontextmanager
async def scratch_database(name: str) -> AsyncIterator[None]:
    """An empty database `name` on the bench's server for the block, dropped after it (its
    connections closed): the A/B and cost tools' own database."""
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def create_databases(name: str) -> None:
    from bench.yardstick import prepare

    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}_yardstick"')
    finally:
        await conn.close()
    await prepare(dsn(f"{name}_yardstick"), WALLETS, FUNDS_MICROS)


async def drop_databases(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        for database in (name, f"{name}_yardstick"):
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


def app_settings(url: str) -> Any:
    """Settings for the harness's own use of the app's code (migrate, fund, mint tokens)."""
    from app.config import Settings

    return Settings(
        _env_file=None,
        environment="test",
        database_url=url,
        jwt_secret=JWT_SECRET,
        jwt_issuer=JWT_ISSUER,
        jwt_audience=JWT_AUDIENCE,
    )


async def prepare_service_database(url: str, lots_per_wallet: int = 1) -> str:
    """Migrate, fund `user-0..user-999` through the ledger's own `lots.credit()` (one
    never-expiring paid lot each; `lots_per_wallet=3` adds a grant expiring in 30 days and a
    top-up expiring in a year, which every debit then draws from), and return a new service
    token."""
    from datetime import timedelta

    from sqlalchemy import text

    from app.auth.service_tokens import create_service_token
    from app.db import create_engine, create_session_maker, session_scope
    from app.ledger import lots
    from app.migrate import upgrade_head
    from app.models.base import utcnow
    from app.models.ledger import LotSource, Txn

    now = utcnow()
    extra = [
        (LotSource.GRANT, "grant", "promotions", now + timedelta(days=30)),
        (LotSource.PURCHASE, "topup", "stripe", now + timedelta(days=365)),
    ][: lots_per_wallet - 1]

    engine = create_engine(app_settings(url))
    try:
        await upgrade_head(engine)
        maker = create_session_maker(engine)
        for start in range(0, WALLETS, 250):
            async with session_scope(maker) as session:
                for i in range(start, min(start + 250, WALLETS)):
                    funding = [(LotSource.ADJUSTMENT, "adjustment", "adjustments", None), *extra]
                    for source, kind, account, expires_at in funding:
                        await lots.credit(
                            session,
                            Txn(f"{kind}:bench-{i}", kind),
                            user_id=f"user-{i}",
                            amount_micros=FUNDS_MICROS,
                            source=source,
                            account=account,
                            expires_at=expires_at,
                        )
        async with session_scope(maker) as session:
            # Every wallet's key `bench-key` has a monthly limit (never reached), for the
            # scenario "usage with a key limit"; requests without the key meet no limit.
            await session.execute(
                text(
                    "INSERT INTO spend_limits (id, user_id, scope, limit_micros, period, "
                    "window_start, spent_micros, created_at, updated_at) "
                    "SELECT 'lim_bench_' || i, 'user-' || i, :scope, :limit, 'month', "
                    "date_trunc('month', now(), 'UTC'), 0, now(), now() "
                    "FROM generate_series(0, :last) AS i"
                ),
                {"scope": f"key:{LIMITED_KEY}", "limit": FUNDS_MICROS, "last": WALLETS - 1},
            )
            _, token = await create_service_token(session, "bench")
    finally:
        await engine.dispose()
    return token


async def drain(databases: list[str], give_up_after: float = 180) -> float:
    """Wait until no session of `databases` is running a statement or holding a transaction open
    (the server finishing requests the load generator gave up on), so that one scenario's
    leftovers do not slow the next; returns the seconds waited."""
    started = time.monotonic()
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        quiet = 0
        while quiet < 2 and time.monotonic() - started < give_up_after:
            busy = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY($1::text[]) "
                "AND state IN ('active', 'idle in transaction') AND pid <> pg_backend_pid()",
                databases,
            )
            quiet = quiet + 1 if busy == 0 else 0
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    return time.monotonic() - started


async def wait_for_no_backends(database: str, give_up_after: float = 60) -> None:
    """Until no other session is connected to `database` (a stopped service's backends have
    exited, publishing their statistics as they go)."""
    started = time.monotonic()
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        while time.monotonic() - started < give_up_after:
            left = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND pid <> pg_backend_pid()",
                database,
            )
            if left == 0:
                return
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise RuntimeError(f"sessions of {database} still open after {give_up_after:g} s")


async def yardstick_consistent(yardstick_dsn: str) -> list[str]:
    """The yardstick's own invariant: what left the accounts is what its entries record."""
    conn = await asyncpg.connect(yardstick_dsn)
    try:
        # One statement, one snapshot: requests still in flight may commit meanwhile.
        balances, spent = await conn.fetchrow(
            "SELECT (SELECT sum(balance) FROM accounts), "
            "(SELECT coalesce(sum(amount), 0) FROM entries)"
        )
    finally:
        await conn.close()
    if balances + spent != WALLETS * FUNDS_MICROS:
        return [f"yardstick: balances {balances} + entries {spent} != {WALLETS * FUNDS_MICROS}"]
    return []


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Row:
    """One line of the table."""

    scenario: str
    workers: int
    load: Load
    unit: str
    throughput: float
    rss_total_mb: float
    rss_worker_mb: float
    ratio: float | None = None
    target: str = ""
    errors_expected: bool = False
    notes: list[str] = field(default_factory=list)
    per_request: float = 1.0
    """Scenario units per request: events per batch, 0.5 pair per hold request."""
    pg_cpu: BackendCpu | None = None
    """The CPU time of the PostgreSQL backends serving the scenario's database over its
    measured window (`bench/pgstats.py`)."""
    service_ticks: int | None = None
    """The CPU ticks (user + system) of the service's processes over the same window."""

    @property
    def service_cpu_per_unit_us(self) -> float | None:
        """The service's CPU per scenario unit, over the measured window."""
        units = self.throughput * self.load.seconds
        if self.service_ticks is None or not units:
            return None
        return self.service_ticks * TICK * 1e6 / units

    @property
    def pg_cpu_per_unit_us(self) -> float | None:
        """PostgreSQL CPU per scenario unit (debit, batch event, pair, webhook event)."""
        if self.pg_cpu is None:
            return None
        return self.pg_cpu.per_event_us(self.throughput * self.load.seconds)

    @property
    def errors(self) -> str:
        load = self.load
        parts = []
        if load.socket_error_count:
            kinds = ", ".join(f"{k} {n}" for k, n in load.socket_errors.items() if n)
            parts.append(f"{load.socket_error_count} socket ({kinds})")
        if load.non2xx:
            parts.append(f"{load.non2xx} non-2xx")
        if load.bad:
            parts.append(f"{load.bad} unexpected body")
        return " + ".join(parts) or "0"


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | workers | throughput | p50 | p99 | errors | peak RSS | ratio | target |",
        "|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for row in rows:
        rss = f"{row.rss_total_mb:.0f} MB"
        if row.workers > 1:
            rss += f" (≤ {row.rss_worker_mb:.0f}/worker)"
        ratio = f"{row.ratio:.2f}{X}" if row.ratio is not None else "—"
        throughput = f"{row.throughput:,.0f} {row.unit}"
        if row.per_request != 1:
            throughput += f" ({row.throughput / row.per_request:,.1f} req/s)"
        lines.append(
            f"| {row.scenario} | {row.workers} | {throughput} "
            f"| {row.load.p50_ms:.1f} ms | {row.load.p99_ms:.1f} ms | {row.errors} | {rss} "
            f"| {ratio} | {row.target} |"
        )
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "? GB"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        memory = f"{kib / 1024 / 1024:.1f} GB"
    return (
        f"{os.cpu_count()} CPUs ({model}), {memory} RAM, {platform.system()} {platform.release()}"
    )


def git_head() -> str:
    done = subprocess.run(
        ["git", "log", "-1", "--format=%h %s"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


# ---------------------------------------------------------------------------------------------
# The run


def service_env(url: str, peer_url: str, environment: str = "production") -> dict[str, str]:
    """The environment of a service the bench starts on `url` against the Stripe peer."""
    from testing.stripe_peer.client import PEER_API_KEY, PEER_PUBLISHABLE_KEY

    return {
        "BILLING_ENVIRONMENT": environment,
        "BILLING_DATABASE_URL": url,
        "BILLING_JWT_SECRET": JWT_SECRET,
        "BILLING_JWT_ISSUER": JWT_ISSUER,
        "BILLING_JWT_AUDIENCE": JWT_AUDIENCE,
        "BILLING_JOBS_ENABLED": "false",
        # The peer's key is a test-mode key (`sk_test_…`), which production refuses
        # unless told this deploy takes no real money.
        "BILLING_ALLOW_TEST_KEYS": "true",
        "BILLING_STRIPE_SECRET_KEY": PEER_API_KEY,
        "BILLING_STRIPE_PUBLISHABLE_KEY": PEER_PUBLISHABLE_KEY,
        "BILLING_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "BILLING_STRIPE_API_BASE": peer_url,
    }


@dataclass
class Bench:
    args: argparse.Namespace
    database: str
    token: str
    peer_url: str
    environment: str = "production"
    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    yardstick: dict[int, float] = field(default_factory=dict)
    """Yardstick requests/s by worker count."""
    usage: dict[int, float] = field(default_factory=dict)
    """Usage debits/s (1,000 wallets) by worker count."""
    limit_cost: dict[int, float] = field(default_factory=dict)
    """Throughput with a key limit ÷ without, by worker count (ABBA, see run_key_limit_cost)."""
    step: int = 0
    invariants_broken: bool = False
    round_trips: str = ""
    writes: list[tuple[str, Writes]] = field(default_factory=list)
    """Rows and index insertions per event, by operation (`count_writes`)."""
    stripe_reads: list[str] = field(default_factory=list)
    """Stripe reads per credited order, by measurement."""
    cpu: BackendCpu | None = None
    """The PostgreSQL CPU of the last measured load, for the next `row()`."""
    service_ticks: int | None = None
    """The service's CPU ticks over the last measured load, for the next `row()`."""

    @property
    def url(self) -> str:
        return sqlalchemy_url(dsn(self.database))

    def service_env(self) -> dict[str, str]:
        return service_env(self.url, self.peer_url, self.environment)

    def service(self, workers: int, **env: str) -> Uvicorn:
        """The service, in production mode if it starts so, else in `test` (said in the notes);
        `env` overrides the environment."""
        server = Uvicorn("service", production_command(), self.service_env() | env, workers)
        try:
            return server.start()
        except StartFailed as exc:
            if self.environment != "production":
                raise
            server.close()
            self.environment = "test"
            reason = str(exc).strip().splitlines()[-1]
            self.notes.append(
                f"The service refused to start with BILLING_ENVIRONMENT=production ({reason}); "
                "this run used `test`."
            )
            log(f"production refused to start, falling back to test: {reason}")
            return Uvicorn(
                "service", production_command(), self.service_env() | env, workers
            ).start()

    def ledger_verify(self) -> str:
        # `torouter-billing ledger-verify`, as `python -m app.cli` so that it is this checkout's
        # code even when the virtualenv's editable install points at another worktree.
        command = [sys.executable, "-m", "app.cli", "ledger-verify"]
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=os.environ | self.service_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            self.failures.append(f"ledger-verify failed:\n{done.stdout}{done.stderr}")
            self.invariants_broken = True
            return "FAILED"
        return "ok"

    def record(self, row: Row, server: Uvicorn, verify: Callable[[], str]) -> None:
        started = time.monotonic()
        waited = asyncio.run(drain([self.database, f"{self.database}_yardstick"]))
        if waited > 3:
            row.notes.append(
                f"the service took {waited:.0f} s after the load stopped to finish the requests "
                "still in flight"
            )
        state = verify()
        unexpected = row.load.non2xx + row.load.bad
        if unexpected and not row.errors_expected:
            self.failures.append(
                f"{row.scenario} ({row.workers} worker(s)): {row.errors}; statuses "
                f"{row.load.statuses or '(wrk does not break them down)'}; the server's log "
                "ends with:\n" + server.log_tail()
            )
        self.rows.append(row)
        self.step += 1
        log(
            f"[{self.step}] {row.scenario}, {row.workers} worker(s): {row.throughput:,.0f} "
            f"{row.unit}, p50 {row.load.p50_ms:.1f} ms, p99 {row.load.p99_ms:.1f} ms, errors "
            f"{row.errors}, peak RSS {row.rss_total_mb:.0f} MB; verify {state} "
            f"({time.monotonic() - started:.1f} s)"
        )

    # -- round trips (bench/roundtrips.py) -----------------------------------------------------

    def count_round_trips(self) -> None:
        """Round trips to PostgreSQL per operation, one request at a time after a warm-up, from
        a 1-worker service whose database connections go through the counting proxy."""
        upstream = urlsplit(ADMIN_DSN)
        with WireCounter(upstream.port or 5432, upstream.hostname or "127.0.0.1") as wire:
            proxied = sqlalchemy_url(dsn(self.database)).replace(
                upstream.netloc.rsplit("@", 1)[-1], f"127.0.0.1:{wire.port}", 1
            )
            with (
                self.service(1, BILLING_DATABASE_URL=proxied) as server,
                httpx.Client(
                    base_url=server.url, headers={"Authorization": f"Bearer {self.token}"}
                ) as http,
            ):
                prefix = secrets.token_hex(4)

                def debit(i: int) -> None:
                    body = {"user_id": f"user-{i % WALLETS}", "request_id": f"rt-{prefix}-{i}"}
                    answer = http.post("/v1/internal/usage", json=body | {"amount_micros": 7000})
                    answer.raise_for_status()

                def limited_debit(i: int) -> None:
                    body: dict[str, Any] = {"user_id": f"user-{i % WALLETS}", "amount_micros": 7000}
                    body |= {"request_id": f"rtk-{prefix}-{i}", "api_key_id": LIMITED_KEY}
                    http.post("/v1/internal/usage", json=body).raise_for_status()

                def pair(i: int) -> None:
                    hold_id = f"rt-{prefix}-{i}"
                    body = {"user_id": f"user-{i % WALLETS}", "hold_id": hold_id}
                    answer = http.post("/v1/internal/holds", json=body | {"amount_micros": 10_000})
                    answer.raise_for_status()
                    answer = http.post(
                        f"/v1/internal/holds/{hold_id}/capture", json={"amount_micros": 7000}
                    )
                    answer.raise_for_status()

                def balance(i: int) -> None:
                    http.get(f"/v1/internal/accounts/user-{i % WALLETS}/balance").raise_for_status()

                found = []
                for name, operation in (
                    ("debit", debit),
                    ("debit with a key limit", limited_debit),
                    ("reserve + capture", pair),
                    ("balance read", balance),
                ):
                    for i in range(20):
                        operation(i)
                    before, n = wire.round_trips, 100
                    for i in range(n):
                        operation(1000 + i)
                    found.append(f"{name} {(wire.round_trips - before) / n:.2f}")
        self.round_trips = ", ".join(found)
        log(f"round trips to PostgreSQL per operation: {self.round_trips}")

    # -- rows and index insertions per event (bench/pgstats.py) --------------------------------

    def count_writes(self, groups: set[str]) -> None:
        """Rows written and index insertions per event, from PostgreSQL's table statistics
        diffed around a counted number of operations: each operation's count runs in a service
        started after the first snapshot and stopped (its backends gone, so their counters are
        published) before the second."""
        prefix = secrets.token_hex(4)
        headers = {"Authorization": f"Bearer {self.token}"}

        def debits(http: httpx.Client, n: int) -> int:
            for i in range(n):
                body = {"user_id": f"user-{i % WALLETS}", "request_id": f"w-{prefix}-{i}"}
                answer = http.post("/v1/internal/usage", json=body | {"amount_micros": 7000})
                answer.raise_for_status()
            return n

        def batches(http: httpx.Client, n: int) -> int:
            size = 1000
            for b in range(n):
                events = [
                    {
                        "user_id": f"user-{(b * 7 + i) % WALLETS}",
                        "request_id": f"wb-{prefix}-{b}-{i}",
                        "amount_micros": 7000,
                        "model": "gpt-4o-mini",
                        "input_tokens": 1200,
                        "output_tokens": 300,
                    }
                    for i in range(size)
                ]
                answer = http.post("/v1/internal/usage/batch", json={"events": events})
                answer.raise_for_status()
                if answer.json().get("failed") != 0:
                    raise RuntimeError(f"a counted batch failed: {answer.text[:500]}")
            return n * size

        def pairs(http: httpx.Client, n: int) -> int:
            for i in range(n):
                hold_id = f"w-{prefix}-{i}"
                body = {"user_id": f"user-{i % WALLETS}", "hold_id": hold_id}
                answer = http.post("/v1/internal/holds", json=body | {"amount_micros": 10_000})
                answer.raise_for_status()
                answer = http.post(
                    f"/v1/internal/holds/{hold_id}/capture", json={"amount_micros": 7000}
                )
                answer.raise_for_status()
            return n

        def batched_pairs(http: httpx.Client, n: int) -> int:
            hold_ids = []
            for i in range(n):
                hold_id = f"wc-{prefix}-{i}"
                body = {"user_id": f"user-{i % WALLETS}", "hold_id": hold_id}
                answer = http.post("/v1/internal/holds", json=body | {"amount_micros": 10_000})
                answer.raise_for_status()
                hold_ids.append(hold_id)
            for start in range(0, n, HOLD_CAPTURE_BATCH):
                items = [
                    {"hold_id": hold_id, "amount_micros": 7000}
                    for hold_id in hold_ids[start : start + HOLD_CAPTURE_BATCH]
                ]
                answer = http.post("/v1/internal/holds/captures", json={"captures": items})
                answer.raise_for_status()
                if answer.json().get("failed") != 0:
                    raise RuntimeError(f"a counted capture batch failed: {answer.text[:500]}")
            return n

        operations: list[tuple[str, str, Callable[[httpx.Client, int], int], int]] = []
        if "usage" in groups:
            operations.append(("usage debit", "debit", debits, 200))
        if "batch" in groups:
            operations.append(("batch of 1,000 events", "event", batches, 3))
        if "holds" in groups:
            operations.append(("reserve + capture", "pair", pairs, 200))
            operations.append(
                (
                    f"reserve + batched captures ({HOLD_CAPTURE_BATCH} a batch)",
                    "pair",
                    batched_pairs,
                    200,
                )
            )
        for name, unit, operation, n in operations:
            before = self.quiet_counters()
            with (
                self.service(1) as server,
                httpx.Client(base_url=server.url, headers=headers, timeout=300) as http,
            ):
                events = operation(http, n)
            writes = Writes.between(before, self.quiet_counters(), events)
            self.writes.append((f"{name} (per {unit}, {events:,} counted)", writes))
            log(f"writes per {unit}, {name}: {writes.summary()}")
        if "webhooks" in groups:
            self.count_webhook_writes(40)

    def count_webhook_writes(self, count: int) -> None:
        """The same for `count` credited webhook orders (created and paid by one service, their
        `payment_intent.succeeded` delivered one at a time to another), and the Stripe reads the
        deliveries made."""
        from testing.stripe_peer.client import sign_payload

        with self.service(1) as server:
            orders = asyncio.run(
                create_paid_orders(server.url, self.peer_url, count, buyers="counted")
            )
        before = self.quiet_counters()
        reads_before = asyncio.run(stripe_reads(self.peer_url))
        with (
            self.service(1) as server,
            httpx.Client(base_url=server.url, timeout=60) as http,
        ):
            for _, _, payload in orders:
                answer = http.post(
                    "/v1/webhooks/stripe",
                    content=payload.encode(),
                    headers={
                        "Content-Type": "application/json; charset=utf-8",
                        "Stripe-Signature": sign_payload(payload.encode(), WEBHOOK_SECRET),
                    },
                )
                answer.raise_for_status()
        writes = Writes.between(before, self.quiet_counters(), len(orders))
        reads = asyncio.run(stripe_reads(self.peer_url)) - reads_before
        problems = asyncio.run(orders_paid_once(self.url, orders))
        self.failures.extend(problems)
        self.invariants_broken |= bool(problems)
        self.writes.append((f"credited webhook order (per order, {len(orders)} counted)", writes))
        self.stripe_reads.append(
            f"{len(orders)} orders delivered one at a time: {reads} reads, "
            f"{reads / len(orders):.2f} per credited order"
        )
        log(f"writes per credited webhook order: {writes.summary()}; Stripe reads {reads}")

    def quiet_counters(self) -> dict[str, Any]:
        """The table counters once no backend of the service's database is left (every
        counter published)."""
        asyncio.run(wait_for_no_backends(self.database))
        return asyncio.run(table_counters(dsn(self.database)))

    # -- closed loop (wrk) ---------------------------------------------------------------------

    def wrk(
        self,
        server: Uvicorn,
        script: str,
        *,
        wallets: int = WALLETS,
        extra: tuple[str, ...] = (),
        token: str | None = None,
        connections: int | None = None,
        seconds: float | None = None,
        warmup: bool = True,
        databases: list[str] | None = None,
    ) -> tuple[Load, RssSampler]:
        """wrk with `script` against `server` (after a warm-up), the PostgreSQL CPU of
        `databases` (the service's by default) measured over the measured run."""
        prefix = secrets.token_hex(4)
        script_args = [token or self.token, prefix, str(wallets)]
        connections = connections or self.args.connections
        common = {"threads": min(self.args.threads, connections), "connections": connections}
        with RssSampler(server.pid) as rss:
            if warmup and self.args.warmup > 0:
                run_wrk(
                    server.url,
                    script,
                    [script_args[0], prefix + "w", *script_args[2:], *extra],
                    seconds=self.args.warmup,
                    **common,
                )
            cpu = BackendCpu(ADMIN_DSN, databases or [self.database])
            asyncio.run(cpu.start())
            service_ticks = process_tree_ticks(server.pid)
            load = run_wrk(
                server.url,
                script,
                [*script_args, *extra],
                seconds=seconds or self.args.seconds,
                **common,
            )
            service_ticks = process_tree_ticks(server.pid) - service_ticks
            asyncio.run(cpu.stop())
        self.cpu = cpu
        self.service_ticks = service_ticks
        return load, rss

    def row(self, name: str, workers: int, load: Load, rss: RssSampler, unit: str) -> Row:
        throughput = load.unit_rate if unit != "req/s" else load.rate
        cpu, self.cpu = self.cpu, None
        service_ticks, self.service_ticks = self.service_ticks, None
        return Row(
            name,
            workers,
            load,
            unit,
            throughput,
            rss.peak_total_kib / 1024,
            rss.peak_worker_kib / 1024,
            pg_cpu=cpu,
            service_ticks=service_ticks,
        )

    def run_yardstick(self, workers: int) -> None:
        yardstick_dsn = dsn(f"{self.database}_yardstick")
        env = {"BENCH_YARDSTICK_DSN": yardstick_dsn}
        with Uvicorn(
            "yardstick", yardstick_command("bench.yardstick:app_factory"), env, workers
        ) as server:
            load, rss = self.wrk(
                server,
                "usage",
                extra=("/debit",),
                token="-",
                databases=[f"{self.database}_yardstick"],
            )
            row = self.row(
                "yardstick: raw asyncpg debit, 1,000 accounts", workers, load, rss, "req/s"
            )
            row.ratio = 1.0
            self.yardstick[workers] = row.throughput

            def verify() -> str:
                problems = asyncio.run(yardstick_consistent(yardstick_dsn))
                self.failures.extend(problems)
                self.invariants_broken |= bool(problems)
                return "FAILED" if problems else "ok"

            self.record(row, server, verify)

    def ratio(self, value: float, workers: int) -> float | None:
        reference = self.yardstick.get(workers)
        return value / reference if reference else None

    def run_usage(self, server: Uvicorn, workers: int, *, hot: bool = False) -> None:
        load, rss = self.wrk(server, "usage", wallets=1 if hot else WALLETS)
        name = "usage: `POST /v1/internal/usage`, " + ("1 hot wallet" if hot else "1,000 wallets")
        row = self.row(name, workers, load, rss, "req/s")
        row.ratio = self.ratio(row.throughput, workers)
        if not hot:
            self.usage[workers] = row.throughput
        if workers == 1 and row.ratio is not None:
            goal = HOT_TARGET if hot else USAGE_TARGET
            row.target = f"≥ {goal:.1f}{X} yardstick: {met(row.ratio >= goal)}"
        self.record(row, server, self.ledger_verify)

    def run_key_limit_cost(self, server: Uvicorn, workers: int) -> None:
        """What a key limit costs the debit: after the plain usage run (A), two runs whose debits
        carry `bench-key` and its limit (B, B), then plain again (A): ABBA, so what drifts over
        the run (tables growing, autovacuum, the neighbours' load) weighs on both alike. The
        target compares the sums of the B and A runs."""
        plain = [self.usage[workers]] if workers in self.usage else []
        limited: list[Row] = []
        for attempt in (1, 2):
            load, rss = self.wrk(server, "usage", extra=("/v1/internal/usage", LIMITED_KEY))
            name = f"usage with a key limit ({attempt}/2): `POST /v1/internal/usage`, 1,000 wallets"
            row = self.row(name, workers, load, rss, "req/s")
            row.ratio = self.ratio(row.throughput, workers)
            limited.append(row)
            if attempt == 2:
                load, rss = self.wrk(server, "usage")
                again = self.row(
                    "usage again (ABBA's second A): `POST /v1/internal/usage`, 1,000 wallets",
                    workers,
                    load,
                    rss,
                    "req/s",
                )
                again.ratio = self.ratio(again.throughput, workers)
                plain.append(again.throughput)
                share = sum(r.throughput for r in limited) / sum(plain) if len(plain) == 2 else 0
                self.limit_cost[workers] = share
                row.target = (
                    f"ABBA: Σ with ÷ Σ without = {share:.2f}{X} (≥ {LIMIT_COST_TARGET}{X}: "
                    f"{met(share >= LIMIT_COST_TARGET)})"
                )
                self.record(row, server, self.ledger_verify)
                self.record(again, server, self.ledger_verify)
            else:
                self.record(row, server, self.ledger_verify)

    def run_batch(self, server: Uvicorn, workers: int, size: int) -> None:
        # A batch that takes seconds (today's code: ~7 s for 1,000 events) would finish none in
        # the window on many connections, and leave minutes of work behind: time one batch
        # first, then use as many connections as can each finish ~3 batches in the window,
        # stretching the window (to 4 batches, at most 60 s) when even one cannot.
        probe = probe_batch(server.url, self.token, size)
        connections = self.args.batch_connections
        seconds = self.args.seconds
        if connections * probe * 3 > seconds:
            connections = max(1, int(seconds / (3 * probe)))
            seconds = min(60.0, max(seconds, 4 * probe))
        load, rss = self.wrk(
            server,
            "batch",
            extra=(str(size),),
            connections=connections,
            seconds=seconds,
            warmup=probe < 0.5,
        )
        row = self.row(
            f"batch: `POST /v1/internal/usage/batch`, {size:,} events, -c{connections}",
            workers,
            load,
            rss,
            "events/s",
        )
        row.per_request = size
        if load.requests < 3 * connections and load.mean_ms > 0:
            # Too few batches finished for completed/window to be more than a round-off:
            # Little's law, `connections` batches always in flight for their mean latency.
            row.throughput = connections * size / (load.mean_ms / 1000)
            row.notes.append(
                f"only {load.requests} batch(es) finished in the window: throughput is "
                f"{connections} in flight x {size} events ÷ the mean latency "
                f"{load.mean_ms / 1000:.1f} s (Little's law)"
            )
        row.ratio = self.ratio(row.throughput, workers)
        if size == 1000 and workers == 1:
            row.target = f"≥ {BATCH_TARGET:,} events/s: {met(row.throughput >= BATCH_TARGET)}"
        if connections != self.args.batch_connections or seconds != self.args.seconds:
            row.notes.append(
                f"one batch alone took {probe:.2f} s, so this ran {connections} connection(s) "
                f"for {seconds:.0f} s instead of {self.args.batch_connections} for "
                f"{self.args.seconds:g} s"
            )
        self.record(row, server, self.ledger_verify)

    def run_holds(self, server: Uvicorn, workers: int) -> None:
        load, rss = self.wrk(server, "holds")
        row = self.row("holds: reserve + capture pairs", workers, load, rss, "pairs/s")
        row.per_request = 0.5
        row.ratio = self.ratio(row.throughput, workers)
        debit = self.usage.get(workers)
        if debit:
            share = row.throughput / debit
            row.target = f"≥ {HOLDS_TARGET}{X} usage: {share:.2f}{X}, {met(share >= HOLDS_TARGET)}"
        self.record(row, server, self.ledger_verify)

    def run_holds_batched(self, server: Uvicorn, workers: int) -> None:
        """Reserves one by one, captures in batches (`POST /v1/internal/holds/captures`) of the
        `HOLD_CAPTURE_BATCH` or more holds a wrk thread has reserved: a gateway that needs no
        capture's answer before going on batches them as it batches usage."""
        load, rss = self.wrk(server, "holds_batched", extra=(str(HOLD_CAPTURE_BATCH),))
        row = self.row(
            f"holds: reserve + batched captures (≥ {HOLD_CAPTURE_BATCH} per batch)",
            workers,
            load,
            rss,
            "pairs/s",
        )
        row.per_request = load.units / load.requests if load.requests else 1.0
        row.ratio = self.ratio(row.throughput, workers)
        debit = self.usage.get(workers)
        if debit:
            share = row.throughput / debit
            row.target = f"≥ {HOLDS_TARGET}{X} usage: {share:.2f}{X}, {met(share >= HOLDS_TARGET)}"
        self.record(row, server, self.ledger_verify)

    # -- open loop (bench/loadgen.py) ----------------------------------------------------------

    def loadgen(
        self, server: Uvicorn, mode: str, *args: str, measure_cpu: bool = False
    ) -> tuple[Load, RssSampler]:
        command = [sys.executable, "-m", "bench.loadgen", mode, "--port", str(server.port), *args]
        cpu = BackendCpu(ADMIN_DSN, [self.database]) if measure_cpu else None
        with RssSampler(server.pid) as rss:
            if cpu is not None:
                asyncio.run(cpu.start())
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
            if cpu is not None:
                asyncio.run(cpu.stop())
        self.cpu = cpu
        if done.returncode != 0:
            raise LoadGeneratorError(f"loadgen exited {done.returncode}:\n{done.stderr}")
        if done.stderr.strip():
            # Socket errors are counted; their messages help to find out which kind.
            log("loadgen said: " + " | ".join(done.stderr.strip().splitlines()[:5]))
        return Load.parse(done.stdout), rss

    def run_balance(self, server: Uvicorn, workers: int, *, writers: int = 0) -> None:
        """The balance read at a fixed rate; with `writers`, while that many wrk connections
        post usage debits to the same service (closed loop) for the whole warm-up and
        measurement."""
        rate = BALANCE_RATE
        debits: Future[Load] | None = None
        pool = ThreadPoolExecutor(max_workers=1)
        if writers:
            debits = pool.submit(
                run_wrk,
                server.url,
                "usage",
                [self.token, secrets.token_hex(4), str(WALLETS)],
                seconds=self.args.warmup + self.args.seconds + 2,
                threads=min(self.args.threads, writers),
                connections=writers,
            )
            time.sleep(0.5)
        load, rss = self.loadgen(
            server,
            "rate",
            "--path-template",
            "/v1/internal/accounts/user-{user}/balance",
            "--token",
            self.token,
            "--rate",
            str(rate),
            "--seconds",
            str(self.args.seconds),
            "--warmup",
            str(self.args.warmup),
            "--connections",
            str(self.args.connections),
            "--wallets",
            str(WALLETS),
        )
        debit_load = debits.result() if debits is not None else None
        pool.shutdown()
        name = f"balance: `GET /v1/internal/accounts/{{id}}/balance` at {rate:,} req/s"
        if writers:
            name += f", usage debits running (wrk -c{writers})"
        row = self.row(name, workers, load, rss, "req/s")
        if debit_load is not None:
            row.notes.append(
                f"meanwhile {debit_load.rate:,.0f} debits/s (p50 {debit_load.p50_ms:.1f} ms, "
                f"p99 {debit_load.p99_ms:.1f} ms, errors {debit_load.socket_error_count} socket "
                f"+ {debit_load.non2xx} non-2xx)"
            )
            if debit_load.non2xx or debit_load.bad:
                self.failures.append(f"{name}: the debits got {debit_load.statuses}")
        kept_up = load.rate >= 0.95 * rate
        row.target = (
            f"p99 < {BALANCE_P99_MS:g} ms at {rate:,} req/s: "
            f"{met(kept_up and load.p99_ms < BALANCE_P99_MS)}"
        )
        if not kept_up or load.unsent:
            abandoned = (
                f"; {load.unsent:,} requests were abandoned unsent as the service fell behind"
                if load.unsent
                else ""
            )
            row.notes.append(
                f"achieved {load.rate:,.0f} of {rate:,} req/s{abandoned} (latency counts from "
                "each request's scheduled time)"
            )
        self.record(row, server, self.ledger_verify)

    def run_webhooks(self, server: Uvicorn, workers: int) -> None:
        count = self.args.webhook_orders
        warm = max(20, count // 10)
        log(f"webhooks: creating {count + warm} orders through POST /v1/purchase, paying them ...")
        started = time.monotonic()
        # Buyers of their own per run: a run's undelivered orders stay pending (5 per user).
        buyers = f"payer-w{workers}"
        orders = asyncio.run(
            create_paid_orders(server.url, self.peer_url, count + warm, buyers=buyers)
        )
        log(f"webhooks: {len(orders)} orders ready in {time.monotonic() - started:.1f} s")
        warmup, measured = orders[:warm], orders[warm:]
        with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
            # Signed now, so that the 300 s tolerance holds however long the setup took.
            files = [Path(tmp, "warmup.jsonl"), Path(tmp, "measured.jsonl")]
            for path, part in zip(files, (warmup, measured), strict=True):
                write_deliveries(path, [payload for _, _, payload in part])
            common = ["--path", "/v1/webhooks/stripe", "--connections", str(self.args.connections)]
            self.loadgen(server, "replay", "--requests", str(files[0]), *common)
            reads_since = asyncio.run(peer_requests_seq(self.peer_url))
            seconds = str(self.args.seconds * 3)
            asyncio.run(drain([self.database]))
            reads_before = asyncio.run(stripe_reads(self.peer_url))
            service_ticks = process_tree_ticks(server.pid)
            load, rss = self.loadgen(
                server,
                "replay",
                "--requests",
                str(files[1]),
                "--seconds",
                seconds,
                *common,
                measure_cpu=True,
            )
            service_ticks = process_tree_ticks(server.pid) - service_ticks
            asyncio.run(drain([self.database]))
            reads = asyncio.run(stripe_reads(self.peer_url)) - reads_before
        row = self.row(
            "webhooks: signed `payment_intent.succeeded`, distinct orders",
            workers,
            load,
            rss,
            "events/s",
        )
        row.ratio = self.ratio(row.throughput, workers)
        row.target = f"≥ {WEBHOOKS_TARGET} events/s: {met(row.throughput >= WEBHOOKS_TARGET)}"
        if load.taken < len(measured):
            row.notes.append(f"delivered {load.taken} of {len(measured)} in the time allowed")
        if load.requests:
            # The service's own CPU (its Python: HTTP, signature, ORM, the Stripe SDK's detail
            # reads after the commit), beside PostgreSQL's per event.
            row.notes.append(
                f"service CPU per event: {service_ticks * TICK * 1e6 / load.requests:,.0f} µs "
                f"(user + system time of the service's processes over the deliveries, "
                f"÷ {load.requests:,} events)"
            )
        credited = load.requests - load.non2xx
        self.stripe_reads.append(
            f"webhook scenario ({workers} worker{'s' if workers > 1 else ''}, {credited:,} "
            f"orders credited by {self.args.connections} concurrent deliveries): "
            f"{reads:,} reads, {reads / credited if credited else 0:.2f} per credited order"
        )

        def verify() -> str:
            delivered = orders[: warm + load.taken]
            problems = asyncio.run(orders_paid_once(self.url, delivered))
            credited = [pi_id for _, pi_id, _ in measured[: load.taken]]
            reads = asyncio.run(payment_intent_reads(self.peer_url, set(credited), reads_since))
            row.notes.append(
                f"Stripe reads per credited order: {reads / max(1, len(credited)):.2f} "
                f"({reads:,} reads of the {len(credited):,} delivered orders' PaymentIntents "
                "at the Stripe peer, counted once they stopped)"
            )
            self.failures.extend(problems)
            self.invariants_broken |= bool(problems)
            state = self.ledger_verify()
            return "FAILED" if problems else state

        self.record(row, server, verify)


def process_tree_ticks(pid: int) -> int:
    """User + system clock ticks (`TICK` s each) of a process and its descendants so far."""
    return sum(backend_ticks(p) or 0 for p in (pid, *descendants(pid)))


def probe_batch(url: str, token: str, size: int) -> float:
    """Seconds one batch of `size` events takes alone (it also warms the path); every event
    must be applied."""
    prefix = secrets.token_hex(4)
    events = [
        {
            "user_id": f"user-{i % WALLETS}",
            "request_id": f"probe-{prefix}-{i}",
            "amount_micros": 7000,
            "model": "gpt-4o-mini",
            "input_tokens": 1200,
            "output_tokens": 300,
        }
        for i in range(size)
    ]
    started = time.perf_counter()
    response = httpx.post(
        f"{url}/v1/internal/usage/batch",
        json={"events": events},
        headers={"Authorization": f"Bearer {token}"},
        timeout=300,
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or response.json().get("failed") != 0:
        raise RuntimeError(f"a probe batch failed: {response.status_code} {response.text[:500]}")
    return elapsed


# ---------------------------------------------------------------------------------------------
# Webhook scenario set-up: orders through the API, paid at the peer


PER_USER = 5  # BILLING_MAX_PENDING_ORDERS' default


async def create_paid_orders(
    service_url: str, peer_url: str, count: int, buyers: str = "payer"
) -> list[tuple[str, str, str]]:
    """`count` top-ups through `POST /v1/purchase` (elements) by users `<buyers>-0…`, each
    paid at the peer; returns `(order_id, payment_intent_id, event payload)` for their
    `payment_intent.succeeded`."""
    from app.auth.jwt import mint_token

    settings = app_settings(sqlalchemy_url(ADMIN_DSN))  # only its JWT secret is used
    paid: list[tuple[str, str]] = []
    users = math.ceil(count / PER_USER)
    async with (
        httpx.AsyncClient(base_url=service_url, timeout=60) as service,
        httpx.AsyncClient(base_url=peer_url, timeout=60) as peer,
    ):
        since = await last_event_seq(peer)
        gate = asyncio.Semaphore(16)

        async def buyer(index: int) -> None:
            user = f"{buyers}-{index}"
            headers = {
                "Authorization": "Bearer "
                + mint_token(settings, user, email=f"{user}@bench.invalid")
            }
            async with gate:
                for _ in range(min(PER_USER, count - index * PER_USER)):
                    response = await service.post(
                        "/v1/purchase",
                        json={"amount": "10.00", "mode": "elements"},
                        headers=headers,
                    )
                    if response.status_code != 201:
                        raise RuntimeError(
                            f"POST /v1/purchase: {response.status_code} {response.text}"
                        )
                    body = response.json()
                    pi_id = body["client_secret"].split("_secret_")[0]
                    result = await peer.post(
                        f"/_test/payment_intents/{pi_id}/pay",
                        json={"payment_method": "pm_card_visa"},
                    )
                    if result.status_code != 200 or result.json()["outcome"] != "succeeded":
                        raise RuntimeError(f"paying {pi_id} at the peer: {result.text}")
                    paid.append((body["order"]["id"], pi_id))

        await asyncio.gather(*(buyer(i) for i in range(users)))
        response = await peer.get(
            "/_test/events", params={"type": "payment_intent.succeeded", "since": since}
        )
        response.raise_for_status()
    payloads = {
        row["event"]["data"]["object"]["id"]: row["payload"] for row in response.json()["data"]
    }
    return [(order_id, pi_id, payloads[pi_id]) for order_id, pi_id in paid]


async def stripe_reads(peer_url: str) -> int:
    """How many API reads (`GET /v1/...`) the Stripe peer has answered so far."""
    async with httpx.AsyncClient(base_url=peer_url, timeout=60) as peer:
        response = await peer.get("/_test/requests", params={"method": "GET", "path": "/v1/"})
        response.raise_for_status()
        return len(response.json()["data"])


async def last_event_seq(peer: httpx.AsyncClient) -> int:
    response = await peer.get("/_test/events")
    response.raise_for_status()
    rows = response.json()["data"]
    return int(rows[-1]["seq"]) if rows else 0


async def peer_requests_seq(peer_url: str) -> int:
    """The Stripe peer's request log position (reads after it are the scenario's)."""
    async with httpx.AsyncClient(base_url=peer_url, timeout=60) as peer:
        response = await peer.get("/_test/requests", params={"method": "GET"})
        response.raise_for_status()
        rows = response.json()["data"]
    return int(rows[-1]["seq"]) if rows else 0


async def payment_intent_reads(peer_url: str, pi_ids: set[str], since: int) -> int:
    """GETs of these PaymentIntents at the peer after `since`, once the count stops growing
    (the receipts are read after the credits; 30 s at most)."""
    counted, stable, deadline = -1, 0, time.monotonic() + 30
    async with httpx.AsyncClient(base_url=peer_url, timeout=60) as peer:
        while time.monotonic() < deadline:
            response = await peer.get(
                "/_test/requests", params={"method": "GET", "path": "/v1/payment_intents/"}
            )
            response.raise_for_status()
            count = sum(
                1
                for r in response.json()["data"]
                if r["seq"] > since and r["path"].rsplit("/", 1)[-1] in pi_ids
            )
            stable = stable + 1 if count == counted else 0
            if stable >= 2:
                break
            counted = count
            await asyncio.sleep(0.5)
    return max(counted, 0)


def write_deliveries(path: Path, payloads: list[str]) -> None:
    """One `[headers, body]` line per event, signed as Stripe signs: `t=…,v1=HMAC(t.body)`."""
    from testing.stripe_peer.client import sign_payload

    with path.open("w") as out:
        for payload in payloads:
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": sign_payload(payload.encode(), WEBHOOK_SECRET),
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            }
            out.write(json.dumps([headers, payload]) + "\n")


async def orders_paid_once(url: str, orders: list[tuple[str, str, str]]) -> list[str]:
    """Every delivered order is `paid`, and its top-up is in the ledger exactly once."""
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        statuses = await conn.fetch(
            "SELECT status, count(*) AS n FROM orders WHERE id = ANY($1::text[]) GROUP BY status",
            [order_id for order_id, _, _ in orders],
        )
        credits = await conn.fetch(
            "SELECT reference, count(*) AS n FROM ledger_transactions "
            "WHERE reference = ANY($1::text[]) GROUP BY reference",
            [f"topup:{pi_id}" for _, pi_id, _ in orders],
        )
    finally:
        await conn.close()
    problems = []
    by_status = {row["status"]: row["n"] for row in statuses}
    if by_status != {"paid": len(orders)}:
        problems.append(f"webhooks: {len(orders)} orders delivered, statuses {by_status}")
    once = sum(1 for row in credits if row["n"] == 1)
    if once != len(orders) or len(credits) != len(orders):
        problems.append(f"webhooks: {len(orders)} orders delivered, {once} credited exactly once")
    return problems


# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def stripe_peer() -> Iterator[str]:
    from testing.stripe_peer.process import PeerProcess

    with PeerProcess(webhook_secret=WEBHOOK_SECRET) as peer:
        yield peer.url


def run(args: argparse.Namespace, bench: Bench) -> None:
    only = set(args.only)
    cores = os.cpu_count() or 1
    if "usage" in only:
        bench.count_round_trips()
    if only & {"usage", "batch", "holds", "webhooks"}:
        bench.count_writes(only)
    bench.run_yardstick(1)
    if only - {"workers"}:
        with bench.service(1) as server:
            if only & {"usage", "holds"}:
                bench.run_usage(server, 1)
            if "usage" in only:
                bench.run_key_limit_cost(server, 1)
                bench.run_usage(server, 1, hot=True)
            if "batch" in only:
                bench.run_batch(server, 1, 100)
                bench.run_batch(server, 1, 1000)
            if "holds" in only:
                bench.run_holds(server, 1)
                bench.run_holds_batched(server, 1)
            if "balance" in only:
                bench.run_balance(server, 1)
                bench.run_balance(server, 1, writers=args.balance_writers)
            if "webhooks" in only:
                bench.run_webhooks(server, 1)
    if "workers" in only and cores > 1:
        bench.run_yardstick(cores)
        with bench.service(cores) as server:
            bench.run_usage(server, cores)
            bench.run_batch(server, cores, 1000)
            bench.run_holds(server, cores)
            bench.run_holds_batched(server, cores)
            bench.run_balance(server, cores)
            if "webhooks" in only:
                bench.run_webhooks(server, cores)


def report(args: argparse.Namespace, bench: Bench, elapsed: float) -> str:
    rss_worker = max(
        (row.rss_worker_mb for row in bench.rows if "yardstick" not in row.scenario), default=0
    )
    lines = [
        "# `make bench`: results",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; code: `{git_head()}`",
        f"- machine: {machine()}; shared with whatever else ran, so read the ratios, not the "
        "absolute figures",
        "- service: the Dockerfile's `torouter-billing serve` on uvicorn "
        f"(`{' '.join(production_command()[3:])}`), "
        f"BILLING_ENVIRONMENT={bench.environment}, jobs off, Stripe = the test peer; "
        "PostgreSQL on 127.0.0.1",
        f"- load: wrk 4.1 `-t{args.threads} -c{args.connections}` (bench/lua/; batches "
        f"`-c{args.batch_connections}` or fewer, see the notes), {args.warmup:g} s warm-up then "
        f"{args.seconds:g} s measured per scenario; from bench/loadgen.py the fixed-rate balance "
        "read (open loop, latency from each request's scheduled time) and the webhook deliveries "
        f"(closed loop, {args.connections} connections); `make bench` took "
        f"{elapsed / 60:.1f} min",
        "- ratio: throughput ÷ the yardstick's req/s with the same worker count; errors = wrk's "
        "socket errors (connect/read/write/timeout) + non-2xx + answers with an unexpected body",
        "",
        table(bench.rows),
        "",
        f"RSS < {RSS_TARGET_MB} MB per worker: peak {rss_worker:.0f} MB, "
        f"{met(0 < rss_worker < RSS_TARGET_MB)}. "
        "Ledger verify after every scenario (and every webhook order paid exactly once): "
        f"{'**FAILED**' if bench.invariants_broken else 'ok'}.",
    ]
    if bench.round_trips:
        lines += [
            "",
            "Round trips to PostgreSQL per operation (counted on the wire by bench/roundtrips.py: "
            "`Sync` and simple `Query` messages; 1 worker, one request at a time, after a "
            f"warm-up): {bench.round_trips}.",
        ]
    if bench.writes:
        lines += [
            "",
            "Rows and index insertions per event (PostgreSQL's `pg_stat_user_tables` diffed "
            "around a counted number of operations, one at a time, by a service started after "
            "the first snapshot and stopped before the second; index insertions = (rows "
            f"inserted + non-HOT updates) {X} the table's indexes):",
            "",
            *[f"- {name}: {writes.summary()}" for name, writes in bench.writes],
        ]
    cpu_rows = [row for row in bench.rows if row.pg_cpu_per_unit_us is not None]
    if cpu_rows:
        yardstick = {
            row.workers: row.pg_cpu_per_unit_us for row in cpu_rows if "yardstick" in row.scenario
        }
        lines += [
            "",
            "PostgreSQL CPU per event (user + system time of the client backends serving the "
            "scenario's database, from /proc/<pid>/stat, over its measured window, ÷ the events "
            "it completed):",
            "",
        ]
        for row in cpu_rows:
            per = row.pg_cpu_per_unit_us or 0.0
            unit = {"req/s": "request", "events/s": "event", "pairs/s": "pair"}.get(row.unit)
            reference = yardstick.get(row.workers)
            versus = (
                f" ({per / reference:.2f}{X} the yardstick's per debit)"
                if reference and "yardstick" not in row.scenario
                else ""
            )
            assert row.pg_cpu is not None
            lost = f", {row.pg_cpu.lost} exited meanwhile" if row.pg_cpu.lost else ""
            service = row.service_cpu_per_unit_us
            own = f"; the service's own CPU {service:,.0f} µs" if service is not None else ""
            lines.append(
                f"- {row.scenario} ({row.workers} worker{'s' if row.workers > 1 else ''}): "
                f"{per:,.0f} µs per {unit or 'unit'}{versus}; {row.pg_cpu.backends} "
                f"backends{lost}{own}"
            )
    if bench.stripe_reads:
        lines += [
            "",
            "Stripe reads per credited order (`GET /v1/…` answered by the Stripe peer, "
            "testing/stripe_peer, while the deliveries ran and their requests finished):",
            "",
            *[f"- {line}" for line in bench.stripe_reads],
        ]
    notes = bench.notes + [
        f"{row.scenario} ({row.workers} worker{'s' if row.workers > 1 else ''}): {note}"
        for row in bench.rows
        for note in row.notes
    ]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--only",
        type=lambda s: [x for x in s.split(",") if x],
        default=list(GROUPS),
        help=f"comma-separated scenario groups among {','.join(GROUPS)} (default: all); "
        "RESULTS.md is written only by a full run",
    )
    parser.add_argument("--seconds", type=float, default=10, help="measured load per scenario")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up load per scenario")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--batch-connections", type=int, default=8, help="connections sending batches"
    )
    parser.add_argument(
        "--webhook-orders", type=int, default=1000, help="distinct orders the webhooks pay"
    )
    parser.add_argument(
        "--balance-writers",
        type=int,
        default=16,
        help="wrk connections posting debits during the second balance scenario",
    )
    parser.add_argument(
        "--lots",
        type=int,
        choices=(1, 3),
        default=1,
        help="credit lots per wallet: 1 (never-expiring paid) or 3 (and an expiring grant and "
        "top-up, which every debit draws from)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(GROUPS)
    if unknown:
        parser.error(f"unknown scenario group(s): {', '.join(sorted(unknown))}")

    started = time.monotonic()
    ensure_wrk()
    database = f"billing_bench_{os.getpid()}_{secrets.token_hex(3)}"
    log(f"creating databases {database} and {database}_yardstick, funding {WALLETS} wallets ...")
    asyncio.run(create_databases(database))
    try:
        token = asyncio.run(prepare_service_database(sqlalchemy_url(dsn(database)), args.lots))
        with stripe_peer() as peer_url:
            bench = Bench(args, database, token, peer_url)
            run(args, bench)
    finally:
        asyncio.run(drop_databases(database))
    text = report(args, bench, time.monotonic() - started)
    print(text)
    if set(args.only) == set(GROUPS):
        RESULTS.write_text(text)
        log(f"wrote {RESULTS.relative_to(ROOT)}")
    for failure in bench.failures:
        log(f"FAILED: {failure}")
    return 1 if bench.failures else 0
