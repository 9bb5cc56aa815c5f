"""A quick local measurement of `POST /v1/internal/usage`: requests per second and latency
through a real uvicorn server on 127.0.0.1 against PostgreSQL, plus the database round trips one
debit costs. Bounded by a request count and a time limit; cleans up after itself.

    .venv/bin/python -m bench.usage_rps [--requests 20000] [--seconds 20] [--concurrency 32]

Needs PostgreSQL (`BILLING_BENCH_DATABASE_URL`, default the test server on 127.0.0.1:5432); it
creates and drops its own database. Client, server and PostgreSQL share this machine's cores,
so the figure is a floor for a real deployment, not a capacity plan.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from app.auth.service_tokens import create_service_token
from app.config import Settings
from app.db import create_engine, create_session_maker, session_scope
from app.ledger.service import Leg, post
from app.ledger.verify import verify_ledger
from app.logs import configure_logging
from app.main import create_app
from app.migrate import upgrade_head

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get(
    "BILLING_BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
JWT_SECRET = "bench-secret-" + "x" * 40
USERS = 100
FUNDS_MICROS = 10**12


def _settings(url: str, **extra: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment="test",
        database_url=url,
        jwt_secret=JWT_SECRET,
        jobs_enabled=False,
        **extra,
    )


@asynccontextmanager
async def bench_database() -> AsyncIterator[str]:
    """A fresh, migrated database with funded wallets; dropped afterwards."""
    name = f"billing_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(_settings(ADMIN_URL))
    async with admin.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        engine = create_engine(_settings(url))
        await upgrade_head(engine)
        async with session_scope(create_session_maker(engine)) as session:
            for i in range(USERS):
                await post(
                    session,
                    reference=f"adjustment:bench-{i}",
                    kind="adjustment",
                    legs=[
                        Leg.wallet(f"user-{i}", FUNDS_MICROS),
                        Leg.account("adjustments", -FUNDS_MICROS),
                    ],
                )
        await engine.dispose()
        yield url
    finally:
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def service_token(url: str) -> str:
    engine = create_engine(_settings(url))
    async with session_scope(create_session_maker(engine)) as session:
        _, token = await create_service_token(session, "bench")
    await engine.dispose()
    return token


def debit_body(user: int) -> dict[str, Any]:
    return {
        "user_id": f"user-{user}",
        "request_id": uuid.uuid4().hex,
        "amount_micros": 7_000,
        "model": "gpt-4o-mini",
        "input_tokens": 1200,
        "output_tokens": 300,
    }


async def round_trips_per_debit(url: str, token: str) -> dict[str, float]:
    """Count what the database sees for one debit, through the whole app in-process: SQL
    statements (before_cursor_execute) plus the BEGIN and COMMIT around them."""
    app = create_app(_settings(url, log_level="WARNING"))
    counts: Counter[str] = Counter()
    async with app.router.lifespan_context(app):
        engine = app.state.engine.sync_engine
        event.listen(engine, "before_cursor_execute", lambda *a: counts.update(["statement"]))
        event.listen(engine, "begin", lambda *a: counts.update(["begin"]))
        event.listen(engine, "commit", lambda *a: counts.update(["commit"]))
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            # Warm up: the service-token lookup is cached, prepared statements are cached.
            for i in range(5):
                await client.post("/v1/internal/usage", json=debit_body(i), headers=headers)
            counts.clear()
            n = 50
            for i in range(n):
                response = await client.post(
                    "/v1/internal/usage", json=debit_body(i % USERS), headers=headers
                )
                assert response.status_code == 201, response.text
    return {k: v / n for k, v in counts.items()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(url: str, port: int, workers: int, pool_size: int) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "BILLING_ENVIRONMENT": "test",
        "BILLING_DATABASE_URL": url,
        "BILLING_JWT_SECRET": JWT_SECRET,
        "BILLING_JOBS_ENABLED": "false",
        "BILLING_LOG_LEVEL": "WARNING",
        "BILLING_DATABASE_POOL_SIZE": str(pool_size),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "app.main:app_factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )


async def wait_ready(base: str, deadline: float) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the server did not become ready")


class Connection:
    """A minimal HTTP/1.1 keep-alive client, so that the load generator (which shares this
    machine's cores with the server and PostgreSQL) costs as little CPU as possible."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.head = (
            f"POST /v1/internal/usage HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length:")
        )
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def load(
    port: int, token: str, requests: int, seconds: float, concurrency: int, users: int = USERS
) -> tuple[float, list[float], Counter[int]]:
    """Send up to `requests` debits on `concurrency` connections for at most `seconds`, spread
    over the first `users` wallets (1: every debit contends for one wallet row)."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    sent = 0
    started = time.perf_counter()
    stop_at = started + seconds

    async def worker(index: int) -> None:
        nonlocal sent
        connection = Connection(port, token)
        user = index
        try:
            while sent < requests and time.perf_counter() < stop_at:
                sent += 1
                user = (user + concurrency) % users
                body = json.dumps(debit_body(user)).encode()
                t0 = time.perf_counter()
                statuses[await connection.post(body)] += 1
                latencies.append(time.perf_counter() - t0)
        finally:
            await connection.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return time.perf_counter() - started, latencies, statuses


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def main_async(args: argparse.Namespace) -> int:
    configure_logging("WARNING", json=True)
    async with bench_database() as url:
        token = await service_token(url)
        trips = await round_trips_per_debit(url, token)
        print(
            "database round trips per debit (steady state): "
            f"{trips.get('statement', 0):.2f} statements + {trips.get('begin', 0):.2f} BEGIN "
            f"+ {trips.get('commit', 0):.2f} COMMIT"
        )
        port = free_port()
        server = start_server(url, port, args.workers, args.pool_size)
        base = f"http://127.0.0.1:{port}"
        try:
            await wait_ready(base, time.monotonic() + 30)
            # Warm the server's pool, token cache and prepared statements.
            await load(port, token, 1000, 10, args.concurrency)
            elapsed, latencies, statuses = await load(
                port, token, args.requests, args.seconds, args.concurrency, args.users
            )
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        engine = create_engine(_settings(url))
        async with session_scope(create_session_maker(engine)) as session:
            violations = await verify_ledger(session)
        await engine.dispose()
    done = len(latencies)
    print(
        f"POST /v1/internal/usage: {done} requests in {elapsed:.1f} s on {args.concurrency} "
        f"connections over {args.users} wallet(s), {args.workers} uvicorn worker(s), "
        f"{os.cpu_count()} CPUs shared with PostgreSQL and this client"
    )
    print(f"  statuses: {dict(statuses)}")
    print(f"  throughput: {done / elapsed:.0f} requests/s")
    print(
        f"  latency: p50 {percentile(latencies, 50) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 99) * 1000:.1f} ms"
    )
    print(f"  ledger verify after the run: {'ok' if not violations else violations}")
    return 0 if statuses.keys() == {201} and not violations else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument(
        "--users", type=int, default=USERS, help=f"wallets to spread debits over (1..{USERS})"
    )
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
