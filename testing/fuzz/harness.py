"""Fuzz the running service against its own `openapi.json` with schemathesis, once per role.

`serve()` starts everything the service needs on loopback: a fresh database (on the tests'
PostgreSQL), the Stripe peer, and the app under uvicorn in a thread.
`fuzz()` then runs `schemathesis run --checks all` for each role (two users, an admin, a gateway
service token, anonymous) and reads each run's JSON report into a `RoleResult`.

Used by `make fuzz` (`python -m testing.fuzz`, 100+ examples per operation) and by the quick run in
`tests/test_fuzz.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.auth.jwt import mint_token
from app.auth.service_tokens import create_service_token
from app.config import Settings
from app.db import create_engine, create_session_maker, session_scope
from app.ledger import lots
from app.main import create_app
from app.migrate import upgrade_head
from app.models.ledger import LotSource, Txn
from app.rate_limits import SCOPES
from dev.postgres import server_for_tests
from testing.stripe_peer import PEER_API_KEY, PEER_PUBLISHABLE_KEY, PeerProcess

HERE = Path(__file__).resolve().parent
CONFIG_FILE = HERE / "schemathesis.toml"
JWT_SECRET = "fuzz-secret-" + secrets.token_hex(24)

ROLES = ("user_a", "user_b", "admin", "gateway", "anonymous")

FAILURE_KINDS = {
    # schemathesis failure codes (`schemathesis explain ST101`).
    "server_errors": ("ST101", "ST102"),
    "undocumented": ("ST103", "ST104", "ST105", "ST106", "ST107", "ST108", "ST109", "ST110"),
    "ignored_auth": ("ST401", "ST402"),
}


_NOT_SCHEMA_VALID = (
    "schemathesis' coverage phase reports as schema-valid a request whose JSON body is `0`, "
    "which the operation's body schema (`type: object`) refuses: the tool's label is wrong, the "
    "422 is right. Seen only since body strings carry their length bounds in bounded patterns "
    "(`{0,998}`); whose: issue 20's fuzz follow-up (find the tool's cause or report it upstream)"
)
KNOWN_FINDINGS: dict[tuple[str, str], str] = {
    ("ST202", "POST /v1/admin/accounts/{user_id}/adjustments"): _NOT_SCHEMA_VALID,
    ("ST202", "POST /v1/admin/refund-requests/{request_id}/deny"): _NOT_SCHEMA_VALID,
}
"""Failures (schemathesis code, operation) that are known and owned elsewhere: still printed
with every run, not counted against it. Keep each entry narrow and say whose it is."""


@dataclass
class Service:
    """The service under test and the credentials of each role."""

    url: str
    headers: dict[str, dict[str, str]]


@dataclass
class RoleResult:
    """What one role's schemathesis run found."""

    role: str
    operations: int = 0
    test_cases: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    """Distinct failures per schemathesis failure code."""
    failing_operations: dict[str, list[str]] = field(default_factory=dict)
    exit_code: int = 0
    output: str = ""

    def count(self, kind: str) -> int:
        return sum(self.failures.get(code, 0) for code in FAILURE_KINDS[kind])

    @property
    def total_failures(self) -> int:
        return sum(self.failures.values())

    @property
    def unexpected(self) -> list[tuple[str, str]]:
        """Failures not in `KNOWN_FINDINGS` (every one fails the run)."""
        found = [
            (code, operation)
            for code, operations in self.failing_operations.items()
            for operation in operations or ["(run)"]
        ]
        return [f for f in found if f not in KNOWN_FINDINGS]

    @property
    def known(self) -> list[tuple[str, str]]:
        return [
            (code, operation)
            for code, operations in self.failing_operations.items()
            for operation in operations
            if (code, operation) in KNOWN_FINDINGS
        ]

    def line(self) -> str:
        return (
            f"{self.role:<10} operations={self.operations:<3} test_cases={self.test_cases:<6} "
            f"server_errors={self.count('server_errors')} "
            f"undocumented={self.count('undocumented')} "
            f"ignored_auth={self.count('ignored_auth')} "
            f"other_failures={len(self.unexpected)} known={len(self.known)}"
        )


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class _Database:
    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"billing_fuzz_{os.getpid()}_{secrets.token_hex(3)}"
        self.url = make_url(admin_url).set(database=self.name).render_as_string(False)

    async def create(self) -> str:
        await self._admin(f'CREATE DATABASE "{self.name}"')
        engine = create_engine(_settings(self.url))
        await upgrade_head(engine)
        await engine.dispose()
        return self.url

    async def drop(self) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    async def _admin(self, sql: str) -> None:
        engine = create_engine(_settings(self.admin_url))
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(sql))
        await engine.dispose()


def _settings(database_url: str, **values: Any) -> Settings:
    return Settings(
        _env_file=None,
        environment="test",
        database_url=database_url,
        jwt_secret=JWT_SECRET,
        jobs_enabled=False,
        log_level="WARNING",
        **values,
    )


async def _seed(settings: Settings) -> str:
    """A balance for each user (so debits and refunds can succeed) and a gateway token."""
    engine = create_engine(settings)
    maker = create_session_maker(engine)
    async with session_scope(maker) as session:
        for user in ("fuzz-user-a", "fuzz-user-b"):
            await lots.credit(
                session,
                Txn(f"adjustment:seed-{user}", "adjustment"),
                user_id=user,
                amount_micros=50_000_000,
                source=LotSource.ADJUSTMENT,
                account="adjustments",
            )
        _, token = await create_service_token(session, "fuzz-gateway")
    await engine.dispose()
    return token


@contextlib.contextmanager
def serve(admin_url: str | None = None) -> Iterator[Service]:
    """The service on a loopback port, with the Stripe peer behind it, until the block ends; its
    database is made on the server of `admin_url` (by default the tests' server,
    `dev.postgres.server_for_tests`)."""
    embedded = None
    if admin_url is None:
        admin_url, embedded = asyncio.run(server_for_tests())
    try:
        with _serve(admin_url) as service:
            yield service
    finally:
        if embedded is not None:
            embedded.stop()


@contextlib.contextmanager
def _serve(admin_url: str) -> Iterator[Service]:
    database = _Database(admin_url)
    url = asyncio.run(database.create())
    peer = PeerProcess(webhook_secret="whsec_" + secrets.token_hex(24)).start()
    try:
        assert peer.webhook_secret is not None
        settings = _settings(
            url,
            database_pool_size=20,
            stripe_secret_key=PEER_API_KEY,
            stripe_publishable_key=PEER_PUBLISHABLE_KEY,
            stripe_webhook_secret=peer.webhook_secret,
            stripe_api_base=peer.url,
            # Limits on, wide enough that the fuzzer reaches the operations behind them.
            **{f"rate_limit_{scope}": "100000/minute" for scope in SCOPES},
            rate_limit_stripe_objects_per_day=100_000,
        )
        gateway_token = asyncio.run(_seed(settings))
        sock = _free_socket()
        port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), log_config=None, access_log=False, lifespan="on")
        )
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        try:
            yield Service(
                url=f"http://127.0.0.1:{port}",
                headers={
                    "user_a": _bearer(mint_token(settings, "fuzz-user-a", email="a@fuzz.test")),
                    "user_b": _bearer(mint_token(settings, "fuzz-user-b", email="b@fuzz.test")),
                    "admin": _bearer(
                        mint_token(settings, "fuzz-admin", email="admin@fuzz.test", admin=True)
                    ),
                    "gateway": _bearer(gateway_token),
                    "anonymous": {},
                },
            )
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()
    finally:
        peer.stop()
        asyncio.run(database.drop())


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def run_role(
    service: Service,
    role: str,
    *,
    max_examples: int,
    report_dir: Path,
    seed: int | None = None,
    phases: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> RoleResult:
    """`schemathesis run --checks all` as `role`; the figures come from its JSON report."""
    report = (report_dir / f"{role}.json").resolve()
    args = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(CONFIG_FILE),
        "run",
        f"{service.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(max_examples),
        "--workers",
        "1",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--continue-on-failure",
        "--no-color",
        *extra_args,
    ]
    if seed is not None:
        args += ["--seed", str(seed)]
    if phases:
        args += ["--phases", phases]
    for name, value in service.headers[role].items():
        args += ["--header", f"{name}: {value}"]
    # In the report dir, so that schemathesis keeps its crash cache there and not in the repo.
    done = subprocess.run(
        args, capture_output=True, text=True, check=False, cwd=report_dir.resolve()
    )
    result = RoleResult(role=role, exit_code=done.returncode, output=done.stdout + done.stderr)
    (report_dir / f"{role}.txt").write_text(result.output)
    if report.exists():
        _read_report(json.loads(report.read_text()), result)
    return result


def _read_report(report: dict[str, Any], result: RoleResult) -> None:
    result.operations = int(report["operations"]["tested"])
    result.test_cases = int(report["test_cases"]["generated"])
    for failure in report.get("failures", []):
        code = str(failure["code"])
        result.failures[code] = result.failures.get(code, 0) + int(failure["count"])
        result.failing_operations.setdefault(code, []).extend(failure.get("operations", []))
    # An operation that could not be tested at all is a failure of the run too.
    errored = int(report["operations"].get("errored", 0)) + len(report.get("errors", []))
    if errored:
        result.failures["errored"] = errored
        result.failing_operations["errored"] = []


def fuzz(
    *,
    max_examples: int,
    roles: tuple[str, ...] = ROLES,
    report_dir: Path,
    admin_url: str | None = None,
    seed: int | None = None,
    phases: str | None = None,
    extra_args: tuple[str, ...] = (),
    parallel: int = 1,
) -> list[RoleResult]:
    """Serve the app and fuzz it as every role (`parallel` roles at a time), in role order."""
    report_dir.mkdir(parents=True, exist_ok=True)
    with serve(admin_url) as service, ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(
            pool.map(
                lambda role: run_role(
                    service,
                    role,
                    max_examples=max_examples,
                    report_dir=report_dir,
                    seed=seed,
                    phases=phases,
                    extra_args=extra_args,
                ),
                roles,
            )
        )
