"""`make verify-failover`: lose the primary database mid-load, lose no acknowledged money.

A pg_auto_failover formation on loopback (a monitor and three PostgreSQL 15 nodes of the
machine's Debian binaries, `number_sync_standbys=1`, ports `--base-port` .. +3, everything in a
temporary folder owned by `postgres`), two `torouter-billing serve` instances on the multi-host
URL, the Stripe peer delivering webhooks to both, and clients that debit (single and batch),
hold and capture, and top up (Elements and Checkout), retrying every unknown outcome (503, no
answer) with the same id until it is definite, and appending every acknowledged id to an
fsync'ed log. Then, under load:

1. the primary's keeper, postmaster and backends are SIGKILLed; the old node is restarted and
   must rejoin as a standby;
2. the new primary is frozen (SIGSTOP) and thawed once a standby has taken over;
3. negative controls: both standbys stopped (the primary writes alone; `/readyz` says
   `synchronous_standby: false`), then the primary killed while they lag: no promotion, 503s
   until the old primary is back, nothing acknowledged missing.

Before the faults, the cost of synchronous replication: usage debits with
`synchronous_commit=on` against `local`, interleaved in the same run.

Checks (exit 1 on any violation): every acknowledged id of the log is in the final primary's
ledger exactly once (lost = 0), no id applied twice, every balance = seed + credits - debits,
`ledger-verify` clean, every PaymentIntent paid at the peer credited once, the old primaries
back as standbys that refuse writes. Everything it started is stopped, on failure too.

    python -m testing.failover [--base-port 6000] [--seed N] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.auth.jwt import mint_token
from app.config import Settings
from testing.crash import JWT_SECRET, Cluster, Tally, _cli, check, fast_forward, say
from testing.stripe_peer import PeerProcess, StripePeer
from testing.stripe_peer.client import PEER_API_KEY, PEER_PUBLISHABLE_KEY

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PACKAGE = "postgresql-15-auto-failover"
USERS = [f"ha-user-{n}" for n in range(6)]
SEED_MICROS = 1_000_000_000
DATABASE = "billing"
# The monitor's timings, shortened from pg_auto_failover's defaults (5 s checks, 20 s before a
# node is unhealthy) so that a run takes minutes; what an operator tunes is in README.md.
MONITOR_SETTINGS = {
    "pgautofailover.health_check_period": "1000",
    "pgautofailover.health_check_timeout": "1000",
    "pgautofailover.health_check_max_retries": "1",
    "pgautofailover.health_check_retry_delay": "500",
    "pgautofailover.node_considered_unhealthy_timeout": "3000",
    # How long the monitor waits for an unreachable primary to have demoted itself before it
    # lets a standby take writes (30 s by default): most of the write gap. Safe to shorten
    # here because the old primary cannot acknowledge a write without a synchronous standby,
    # and its standbys stop replicating from it before one is promoted.
    "pgautofailover.primary_demote_timeout": "5000",
    # A standby may be promoted only with every byte of WAL the primary last reported (16 MB by
    # default: a primary that wrote alone would lose what it acknowledged meanwhile).
    "pgautofailover.promote_wal_log_threshold": "1",
}
_PROBE_ERRORS = (
    OSError,  # refused, reset, timed out
    asyncpg.PostgresError,  # starting up, shutting down
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # a node dying under the probe's statement
)
DEADLINE_SECONDS = 600.0
"""The whole run is bounded: past this, it stops and fails."""


def ensure_pg_autoctl() -> str:
    """`pg_autoctl`, installed from Debian with apt-get when missing (root only)."""
    found = shutil.which("pg_autoctl")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit(f"pg_autoctl is missing: apt-get install {PACKAGE} (as root)")
    say(f"installing {PACKAGE} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, timeout=300)
    subprocess.run(["apt-get", "install", "-y", "-q", PACKAGE], check=True, env=env, timeout=600)
    found = shutil.which("pg_autoctl")
    if not found:
        raise SystemExit("pg_autoctl still missing after apt-get install")
    return found


# -- the formation -----------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    port: int
    pgdata: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"


class Formation:
    """The monitor and three nodes, each a `pg_autoctl ... --run` in a session of its own (so a
    fault reaches its keeper, postmaster and backends at once), run as `postgres` when root."""

    def __init__(self, root: Path, base_port: int, pg_autoctl: str) -> None:
        self.root = root
        self.pg_autoctl = pg_autoctl
        self.monitor = Node("monitor", base_port, root / "monitor")
        self.nodes = [Node(f"node{n}", base_port + n, root / f"node{n}") for n in (1, 2, 3)]
        self.logs = root / "logs"
        self.monitor_uri = (
            f"postgres://autoctl_node@127.0.0.1:{base_port}/pg_auto_failover?sslmode=disable"
        )

    def _command(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return [
            *prefix,
            "env",
            f"PATH={PG_BIN}:/usr/bin:/bin",
            f"XDG_CONFIG_HOME={self.root / 'config'}",
            f"XDG_DATA_HOME={self.root / 'data'}",
            f"XDG_RUNTIME_DIR={self.root / 'run'}",
            self.pg_autoctl,
            *args,
        ]

    def _spawn(self, node: Node, *args: str) -> None:
        log = open(self.logs / f"{node.name}.log", "ab")
        node.proc = subprocess.Popen(
            self._command(*args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def run_once(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            self._command(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_autoctl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    async def start(self) -> None:
        for sub in ("config", "data", "run", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in [self.root, *self.root.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)
        common = ["--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl"]
        common += ["--pgctl", str(PG_BIN / "pg_ctl")]
        self._spawn(
            self.monitor,
            "create", "monitor", "--pgdata", str(self.monitor.pgdata),
            "--pgport", str(self.monitor.port), *common, "--run",
        )  # fmt: skip
        await self._wait_sql(self.monitor.port, "pg_auto_failover", "SELECT 1", 60)
        monitor = await asyncpg.connect(self._monitor_dsn())
        try:
            for name, value in MONITOR_SETTINGS.items():
                await monitor.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            await monitor.execute("SELECT pg_reload_conf()")
        finally:
            await monitor.close()
        for n, node in enumerate(self.nodes):
            self._spawn(
                node,
                "create", "postgres", "--pgdata", str(node.pgdata), "--pgport", str(node.port),
                "--name", node.name, "--dbname", DATABASE, "--monitor", self.monitor_uri,
                *common, "--run",
            )  # fmt: skip
            want = {"single"} if n == 0 else {"primary", "secondary"}
            # pg_basebackup asks the primary for a spread checkpoint; an immediate one ends it.
            pushing = asyncio.create_task(self._checkpoints(self.nodes[0])) if n else None
            try:
                await self.wait_states(lambda states, w=want: set(states.values()) <= w, 120)
            finally:
                if pushing is not None:
                    pushing.cancel()
                    await asyncio.gather(pushing, return_exceptions=True)
        await self.wait_states(_healthy, 120)
        await self.number_sync_standbys(1)
        await self.wait_states(_healthy, 60)

    async def number_sync_standbys(self, number: int) -> None:
        monitor = await asyncpg.connect(self._monitor_dsn())
        try:
            await monitor.fetchval(
                "SELECT pgautofailover.set_formation_number_sync_standbys('default', $1)", number
            )
        finally:
            await monitor.close()

    async def _checkpoints(self, node: Node) -> None:
        while True:
            await asyncio.sleep(2)
            with contextlib.suppress(*_PROBE_ERRORS):
                conn = await asyncpg.connect(node.dsn, timeout=2)
                try:
                    await conn.execute("CHECKPOINT")
                finally:
                    await conn.close()

    def _monitor_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.monitor.port}/pg_auto_failover"

    async def _wait_sql(self, port: int, db: str, sql: str, timeout: float) -> None:
        ends = time.monotonic() + timeout
        while True:
            try:
                conn = await asyncpg.connect(
                    f"postgresql://postgres@127.0.0.1:{port}/{db}", timeout=2
                )
                await conn.fetchval(sql)
                await conn.close()
                return
            except _PROBE_ERRORS:
                if time.monotonic() > ends:
                    raise
                await asyncio.sleep(0.5)

    async def states(self) -> dict[str, str]:
        """Each node's state as the monitor last heard it (`reportedstate/goalstate`)."""
        conn = await asyncpg.connect(self._monitor_dsn(), timeout=2)
        try:
            rows = await conn.fetch(
                "SELECT nodename, reportedstate::text AS r, goalstate::text AS g "
                "FROM pgautofailover.node ORDER BY nodeid"
            )
        finally:
            await conn.close()
        return {r["nodename"]: r["r"] if r["r"] == r["g"] else f"{r['r']}>{r['g']}" for r in rows}

    async def wait_states(self, ok: Any, timeout: float) -> dict[str, str]:
        ends = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < ends:
            with contextlib.suppress(*_PROBE_ERRORS):
                states = await self.states()
                if states and ok(states):
                    return states
            await asyncio.sleep(0.3)
        raise RuntimeError(f"formation did not settle in {timeout:g} s: {states}")

    async def writable(self) -> Node | None:
        """The node that takes writes now (asked directly, 0.5 s each), if any."""
        for node in self.nodes:
            try:
                conn = await asyncpg.connect(node.dsn, timeout=0.5)
            except _PROBE_ERRORS:
                continue
            try:
                async with asyncio.timeout(0.5):
                    # As the service sees it (target_session_attrs=read-write): a promoted node
                    # stays read-only until the monitor confirms the promotion.
                    if await conn.fetchval(
                        "SELECT NOT pg_is_in_recovery()"
                        " AND current_setting('transaction_read_only') = 'off'"
                    ):
                        return node
            except _PROBE_ERRORS:
                pass
            finally:
                conn.terminate()
        return None

    def signal(self, node: Node, sig: signal.Signals) -> None:
        """`sig` to the node's keeper, postmaster and backends at once (its session)."""
        assert node.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, sig)
        if sig == signal.SIGKILL:
            postmaster = _postmaster_pid(node)
            if postmaster is not None:  # should be in the session too; make sure
                with contextlib.suppress(ProcessLookupError):
                    os.kill(postmaster, signal.SIGKILL)

    def restart(self, node: Node) -> None:
        if node.proc is not None and node.proc.poll() is None:
            # After `pg_autoctl stop` its runuser lingers: end its session before the next one.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(5)
        self._spawn(node, "run", "--pgdata", str(node.pgdata))

    async def stop(self, node: Node) -> None:
        """A clean stop (`pg_autoctl stop`), as an operator takes a node down: done once its
        port refuses connections."""
        await asyncio.to_thread(self.run_once, "stop", "--pgdata", str(node.pgdata))
        ends = time.monotonic() + 30
        while time.monotonic() < ends:
            try:
                conn = await asyncpg.connect(node.dsn, timeout=0.5)
            except _PROBE_ERRORS:
                return
            conn.terminate()
            await asyncio.sleep(0.3)
        raise RuntimeError(f"{node.name} still answers 30 s after pg_autoctl stop")

    def close(self) -> None:
        for node in [*self.nodes, self.monitor]:
            if node.proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGCONT)
                os.killpg(node.proc.pid, signal.SIGKILL)
            postmaster = _postmaster_pid(node)
            if postmaster is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(postmaster, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(10)


def _postmaster_pid(node: Node) -> int | None:
    try:
        return int((node.pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _healthy(states: dict[str, str]) -> bool:
    values = sorted(states.values())
    return values == ["primary", "secondary", "secondary"]


# -- the clients -----------------------------------------------------------------------------


class AckLog:
    """Every acknowledged operation, one JSON line each, fsync'ed before it counts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")
        self.times: list[float] = []

    def ack(self, kind: str, ident: str, user: str, amount: int) -> None:
        line = {"kind": kind, "id": ident, "user": user, "amount": amount, "t": time.time()}
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.times.append(time.monotonic())

    def read(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def close(self) -> None:
        self._file.close()


@dataclass
class Outcomes:
    """Operations that met an unknown outcome (503 or no answer) before a definite one, by how
    the retry with the same id resolved them."""

    resolved: Counter[str] = field(default_factory=Counter)
    unresolved: list[str] = field(default_factory=list)
    answers_503: int = 0


def _how(replayed: object) -> str:
    """How a retry resolved an unknown outcome: the first attempt had applied it, or not."""
    return "found applied by the lost attempt" if replayed else "applied by the retry"


class Load:
    """The clients: debits, batches, holds, top-ups, each retried with its id until definite."""

    def __init__(
        self,
        cluster: Cluster,
        peer: StripePeer,
        gateway: dict[str, str],
        tokens: dict[str, str],
        log: AckLog,
    ) -> None:
        self.cluster = cluster
        self.peer = peer
        self.gateway = gateway
        self.tokens = tokens
        self.log = log
        self.tally = Tally()
        self.outcomes = Outcomes()
        self.stop = asyncio.Event()
        self.topup_micros: Counter[str] = Counter()
        self.peer_failures = 0

    async def definite(self, method: str, path: str, **kw: Any) -> tuple[httpx.Response, int]:
        """Retry with the same body until the answer is definite (not 5xx, not none), for up
        to two minutes; the number of unknown outcomes met on the way."""
        unknown = 0
        ends = time.monotonic() + 120
        while time.monotonic() < ends:
            response = await self.cluster.request(self.tally, method, path, **kw)
            if response is not None and response.status_code < 500:
                return response, unknown
            if response is not None and response.status_code == 503:
                self.outcomes.answers_503 += 1
            unknown += 1
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{method} {path}: no definite answer in 120 s")

    def _resolved(self, unknown: int, how: str) -> None:
        if unknown:
            self.outcomes.resolved[how] += 1

    async def debits(self) -> None:
        while not self.stop.is_set():
            request_id = f"ha-{uuid.uuid4().hex}"
            user = random.choice(USERS)
            amount = random.randint(1_000, 50_000)
            self.tally.usage_sent.add(request_id)
            body = {"user_id": user, "request_id": request_id, "amount_micros": amount}
            try:
                r, unknown = await self.definite(
                    "POST", "/v1/internal/usage", json=body, headers=self.gateway
                )
            except TimeoutError:
                self.outcomes.unresolved.append(request_id)
                continue
            if r.status_code in (200, 201):
                self.log.ack("debit", request_id, user, amount)
                self.tally.usage_ok.add(request_id)
                self._resolved(unknown, "debit " + _how(r.json()["replayed"]))
            else:
                self._resolved(unknown, f"debit refused {r.status_code}")

    async def batches(self) -> None:
        while not self.stop.is_set():
            events: list[dict[str, Any]] = []
            for _ in range(random.randint(2, 8)):
                request_id = f"ha-b-{uuid.uuid4().hex}"
                self.tally.usage_sent.add(request_id)
                events.append(
                    {
                        "user_id": random.choice(USERS),
                        "request_id": request_id,
                        "amount_micros": random.randint(1_000, 20_000),
                    }
                )
            try:
                r, unknown = await self.definite(
                    "POST", "/v1/internal/usage/batch", json={"events": events},
                    headers=self.gateway,
                )  # fmt: skip
            except TimeoutError:
                self.outcomes.unresolved.extend(e["request_id"] for e in events)
                continue
            if r.status_code != 200:
                self._resolved(unknown, f"batch refused {r.status_code}")
                continue
            replayed = 0
            for event, result in zip(events, r.json()["results"], strict=True):
                if result["status"] in ("applied", "replayed"):
                    self.log.ack(
                        "debit", event["request_id"], event["user_id"], event["amount_micros"]
                    )
                    self.tally.usage_ok.add(event["request_id"])
                    replayed += result["status"] == "replayed"
            self._resolved(unknown, "batch " + _how(replayed > 0))

    async def holds(self) -> None:
        while not self.stop.is_set():
            hold_id = f"ha-hold-{uuid.uuid4().hex}"
            user = random.choice(USERS)
            self.tally.holds_sent.add(hold_id)
            body = {"user_id": user, "hold_id": hold_id, "amount_micros": 100_000}
            try:
                r, unknown = await self.definite(
                    "POST", "/v1/internal/holds", json=body, headers=self.gateway
                )
                self._resolved(unknown, "reserve resolved")
                if r.status_code not in (200, 201):
                    continue
                self.log.ack("reserve", hold_id, user, 0)
                amount = random.randint(1, 100_000)
                r, unknown = await self.definite(
                    "POST", f"/v1/internal/holds/{hold_id}/capture",
                    json={"amount_micros": amount}, headers=self.gateway,
                )  # fmt: skip
            except TimeoutError:
                self.outcomes.unresolved.append(hold_id)
                continue
            if r.status_code in (200, 201):
                self.log.ack("capture", hold_id, user, amount)
                self.tally.captured_ok[hold_id] = amount
                self._resolved(unknown, "capture " + _how(r.json().get("replayed")))
            else:
                self._resolved(unknown, f"capture refused {r.status_code}")

    async def topups(self, mode: str) -> None:
        while not self.stop.is_set():
            user = random.choice(USERS)
            headers = {
                "Authorization": f"Bearer {self.tokens[user]}",
                "Idempotency-Key": uuid.uuid4().hex,
            }
            amount = random.choice(["10.00", "20.00"])
            self.tally.purchases += 1
            try:
                r, unknown = await self.definite(
                    "POST", "/v1/purchase", json={"amount": amount, "mode": mode}, headers=headers
                )
            except TimeoutError:
                self.outcomes.unresolved.append(headers["Idempotency-Key"])
                continue
            self._resolved(unknown, "purchase resolved")
            if r.status_code != 201:
                await asyncio.sleep(0.5)
                continue
            paid: dict[str, Any] | None = None
            try:
                if mode == "elements":
                    pi = r.json()["client_secret"].split("_secret_")[0]
                    paid = await self.peer.pay_payment_intent(pi)
                else:
                    found = re.search(r"cs_[A-Za-z0-9_]+", r.json()["checkout_url"])
                    if found:
                        paid = await self.peer.pay_checkout(found.group(0))
            except Exception:
                self.peer_failures += 1
            if paid is not None and paid["outcome"] == "succeeded":
                pi = paid["payment_intent"]["id"]
                self.tally.paid_pis[pi] = r.json()["order"]["id"]
                self.topup_micros[user] += int(paid["payment_intent"]["amount"]) * 10_000
                self.log.ack("topup", pi, user, int(paid["payment_intent"]["amount"]) * 10_000)
            await asyncio.sleep(0.3)

    def drivers(self) -> list[Any]:
        return [
            *(self.debits() for _ in range(4)),
            self.batches(),
            *(self.holds() for _ in range(2)),
            self.topups("elements"),
            self.topups("checkout"),
        ]


# -- the measurements ------------------------------------------------------------------------


@dataclass
class Gap:
    name: str
    fault: float
    last_ack: float = 0.0
    detected: float | None = None
    promoted: float | None = None
    first_ack: float | None = None
    new_primary: str = ""
    answers_503: int = 0

    def line(self) -> str:
        def span(a: float | None, b: float | None) -> str:
            return f"{b - a:.2f} s" if a is not None and b is not None else "n/a"

        return (
            f"{self.name}: write gap {span(self.last_ack, self.first_ack)} "
            f"(last ack {self.fault - self.last_ack:.2f} s before the fault; detection "
            f"{span(self.fault, self.detected)}, promotion {span(self.detected, self.promoted)}, "
            f"reconnect {span(self.promoted, self.first_ack)}); new primary {self.new_primary}; "
            f"503 answers meanwhile {self.answers_503}"
        )


async def watch_failover(formation: Formation, load: Load, gap: Gap, old: Node) -> None:
    """Stamp detection (the monitor moves the old primary's goal away from primary), promotion
    (another node takes writes) and reconnection (the first acknowledgement after it)."""
    ends = time.monotonic() + 120
    acks_before = len(load.log.times)
    while time.monotonic() < ends:
        now = time.monotonic()
        if gap.detected is None:
            with contextlib.suppress(*_PROBE_ERRORS):
                state = (await formation.states()).get(old.name, "")
                if state.split(">")[-1] != "primary":
                    gap.detected = time.monotonic()
        if gap.promoted is None:
            node = await formation.writable()
            if node is not None and node is not old:
                gap.promoted = time.monotonic()
                gap.new_primary = node.name
                gap.detected = gap.detected or gap.promoted
        if gap.promoted is not None:
            after = [t for t in load.log.times[acks_before:] if t > gap.promoted]
            if after:
                gap.first_ack = after[0]
                return
        await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - now)))
    raise RuntimeError(f"{gap.name}: no failover within 120 s")


async def fault_round(
    formation: Formation, load: Load, name: str, sig: signal.Signals
) -> tuple[Gap, Node]:
    old = await formation.writable()
    assert old is not None
    await asyncio.sleep(random.uniform(4, 8))  # mid-load
    before_503 = load.outcomes.answers_503
    gap = Gap(name, fault=time.monotonic())
    gap.last_ack = load.log.times[-1] if load.log.times else gap.fault
    say(f"{name}: {sig.name} to {old.name} (keeper, postmaster, backends)")
    formation.signal(old, sig)
    await watch_failover(formation, load, gap, old)
    gap.answers_503 = load.outcomes.answers_503 - before_503
    say(gap.line())
    await asyncio.sleep(3)
    if sig == signal.SIGSTOP:
        formation.signal(old, signal.SIGCONT)
    else:
        formation.restart(old)
    await formation.wait_states(_healthy, 120)
    say(f"{name}: {old.name} back: {await formation.states()}")
    return gap, old


async def refuses_writes(node: Node) -> bool:
    """The node is a standby: in recovery, and a write there fails with SQLSTATE 25006."""
    conn = await asyncpg.connect(node.dsn, timeout=5)
    try:
        if not await conn.fetchval("SELECT pg_is_in_recovery()"):
            return False
        try:
            await conn.execute("CREATE TABLE failover_probe (x int)")
        except asyncpg.exceptions.ReadOnlySQLTransactionError:
            return True
        return False
    finally:
        await conn.close()


async def sync_cost(
    cluster: Cluster, formation: Formation, gateway: dict[str, str], log: AckLog
) -> str:
    """Usage debits per second, 8 clients on one instance, synchronous_commit on vs local,
    interleaved (on, local, on, local; 4 s each)."""
    primary = await formation.writable()
    assert primary is not None
    client = cluster.clients[cluster.instances[0].url]
    rates: dict[str, list[float]] = {"on": [], "local": []}

    async def burst(seconds: float) -> int:
        done = 0
        ends = time.monotonic() + seconds

        async def one() -> None:
            nonlocal done
            while time.monotonic() < ends:
                body = {
                    "user_id": USERS[0],
                    "request_id": f"ha-cost-{uuid.uuid4().hex}",
                    "amount_micros": 1_000,
                }
                r = await client.post("/v1/internal/usage", json=body, headers=gateway)
                if r.status_code == 201:
                    done += 1
                    log.ack("debit", str(body["request_id"]), USERS[0], 1_000)

        await asyncio.gather(*(one() for _ in range(8)))
        return done

    conn = await asyncpg.connect(primary.dsn)
    try:
        for mode in ("on", "local", "on", "local"):
            await conn.execute(f"ALTER SYSTEM SET synchronous_commit = '{mode}'")
            await conn.execute("SELECT pg_reload_conf()")
            await asyncio.sleep(0.5)
            rates[mode].append(await burst(4.0) / 4.0)
    finally:
        await conn.execute("ALTER SYSTEM RESET synchronous_commit")
        await conn.execute("SELECT pg_reload_conf()")
        await conn.close()
    on, local = sum(rates["on"]) / 2, sum(rates["local"]) / 2
    return (
        f"sync cost: usage debits/s synchronous_commit=on {on:.0f} (runs {rates['on']}), "
        f"local {local:.0f} (runs {rates['local']}): on/local = {on / local:.2f}"
    )


async def readyz(cluster: Cluster) -> dict[str, Any]:
    response = await cluster.clients[cluster.instances[0].url].get("/readyz")
    return {"status": response.status_code, **response.json()}


async def controls(formation: Formation, load: Load, cluster: Cluster) -> list[str]:
    """Both standbys stopped: with number_sync_standbys=1 writes wait (nothing is acknowledged
    without a copy); with 0 the primary writes alone and `/readyz` says so. Then the primary
    killed while both standbys lag: no promotion, 503s until the old primary is back."""
    failures: list[str] = []
    primary = await formation.writable()
    assert primary is not None
    standbys = [n for n in formation.nodes if n is not primary]
    for node in standbys:
        await formation.stop(node)
    stopped_at = time.monotonic()
    await asyncio.sleep(6)
    blocked = [t for t in load.log.times if t > stopped_at + 1]
    ready = await readyz(cluster)
    say(
        f"control 1a, both standbys stopped, number_sync_standbys=1: {len(blocked)} acks in "
        f"the 5 s after the first second (writes wait for a standby); /readyz {ready}"
    )
    if blocked:
        failures.append(f"{len(blocked)} writes acknowledged with no standby (nss=1)")
    await formation.number_sync_standbys(0)
    await formation.wait_states(lambda s: s.get(primary.name, "").endswith("wait_primary"), 60)
    alone_at = time.monotonic()
    await asyncio.sleep(5)
    written = [t for t in load.log.times if t > alone_at]
    ready = await readyz(cluster)
    say(
        f"control 1b, number_sync_standbys=0: primary {primary.name} wait_primary after "
        f"{alone_at - stopped_at:.1f} s; {len(written)} acks in the next 5 s (alone); /readyz "
        f"{ready}"
    )
    if not written or ready.get("synchronous_standby") is not False:
        failures.append(f"primary alone: {len(written)} acks, /readyz {ready}")

    before_503 = load.outcomes.answers_503
    formation.signal(primary, signal.SIGKILL)
    killed_at = time.monotonic()
    for node in standbys:
        formation.restart(node)
    promoted = None
    while time.monotonic() - killed_at < 15:
        promoted = await formation.writable()
        if promoted is not None:
            break
        await asyncio.sleep(0.3)
    during = [t for t in load.log.times if t > killed_at + 1]
    say(
        f"control 2, primary killed while both standbys lag: promoted within 15 s: "
        f"{promoted.name if promoted else 'none'}; acks meanwhile {len(during)}; 503 answers "
        f"{load.outcomes.answers_503 - before_503}; states {await formation.states()}"
    )
    if promoted is not None or during:
        failures.append(f"lagging standby promoted ({promoted}) or acks while down ({len(during)})")
    formation.restart(primary)
    await formation.wait_states(_healthy, 180)
    back = await formation.writable()
    resumed = [t for t in load.log.times if t > killed_at]
    say(
        f"control 2: old primary back as {back.name if back else None}, formation healthy "
        f"{time.monotonic() - killed_at:.1f} s after the kill; first ack after the kill "
        f"{resumed[0] - killed_at if resumed else float('nan'):.1f} s"
    )
    if back is not primary:
        failures.append(f"after the lagging kill the primary is {back}, not {primary.name}")
    await formation.number_sync_standbys(1)
    await formation.wait_states(_healthy, 60)
    return failures


async def balances(dsn: str, load: Load, log: list[dict[str, Any]]) -> list[str]:
    """Every wallet = seed + credits - debits of the acknowledged log (each resolved op once)."""
    expected = {u: SEED_MICROS for u in USERS}
    for entry in log:
        if entry["kind"] == "topup":
            expected[entry["user"]] += entry["amount"]
        elif entry["kind"] in ("debit", "capture"):
            expected[entry["user"]] -= entry["amount"]
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT user_id, balance_micros FROM accounts WHERE user_id = ANY($1::text[])", USERS
        )
        refs = await conn.fetch(
            "SELECT reference, count(*) AS n FROM ledger_transactions"
            " WHERE reference NOT LIKE 'usage%' GROUP BY reference"
        )
        # A usage debit is its usage record (a batch's events have no transaction of their
        # own), or a usage transaction without one (none since migration 0023).
        refs += await conn.fetch(
            "SELECT reference, count(*) AS n FROM ("
            " SELECT reference FROM usage_records WHERE reference IS NOT NULL"
            " UNION ALL"
            " SELECT t.reference FROM ledger_transactions t WHERE t.kind = 'usage'"
            " AND t.reference LIKE 'usage:%' AND NOT EXISTS (SELECT 1 FROM usage_records u"
            " WHERE u.transaction_id = t.id AND u.reference = t.reference)) d"
            " GROUP BY reference"
        )
    finally:
        await conn.close()
    # Summed: a capture is its transaction `hold:<id>` alone or its record in a batch's
    # transaction, and one applied both ways would be applied twice.
    count: Counter[str] = Counter()
    for r in refs:
        count[r["reference"]] += r["n"]
    actual = {r["user_id"]: r["balance_micros"] for r in rows}
    wrong = {u: (actual.get(u), e) for u, e in expected.items() if actual.get(u) != e}
    prefix = {"debit": "usage:", "capture": "hold:", "topup": "topup:"}
    acked = [e for e in log if e["kind"] in prefix]
    lost = [e["id"] for e in acked if count.get(prefix[e["kind"]] + e["id"], 0) == 0]
    doubled = [r for r, n in count.items() if n > 1]
    say(
        f"ack log: {len(log)} lines ({Counter(e['kind'] for e in log)}); lost {len(lost)}, "
        f"applied twice {len(doubled)}; balances = seed + credits - debits: "
        f"{len(USERS) - len(wrong)}/{len(USERS)}"
    )
    failures = []
    if lost or doubled:
        failures.append(f"acknowledged but missing: {lost[:5]}; twice: {doubled[:5]}")
    if wrong:
        failures.append(f"balances (actual, expected): {wrong}")
    return failures


# -- main ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    random.seed(args.seed)
    # SIGINT or SIGTERM cancels the run, so that everything below is still stopped.
    me = asyncio.current_task()
    assert me is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, me.cancel)
    pg_autoctl = ensure_pg_autoctl()
    root = Path(tempfile.mkdtemp(prefix="billing-failover-"))
    os.chmod(root, 0o755)
    formation = Formation(root, args.base_port, pg_autoctl)
    cluster: Cluster | None = None
    log = AckLog(root / "acks.jsonl")
    failures: list[str] = []
    started = time.monotonic()
    say(f"folder {root}; ports {args.base_port}-{args.base_port + 3}; seed {args.seed}")
    try:
        await formation.start()
        say(f"formation up in {time.monotonic() - started:.0f} s: {await formation.states()}")
        hosts = "&".join(f"host=127.0.0.1:{n.port}" for n in formation.nodes)
        url = f"postgresql+asyncpg://postgres@/{DATABASE}?{hosts}&target_session_attrs=read-write"
        webhook_secret = "whsec_" + secrets.token_hex(24)
        with PeerProcess(webhook_secret=webhook_secret) as peer_process:
            env = {
                "BILLING_ENVIRONMENT": "test",
                "BILLING_DATABASE_URL": url,
                "BILLING_DATABASE_POOL_SIZE": "10",
                "BILLING_DATABASE_CONNECT_TIMEOUT_SECONDS": "1",
                "BILLING_JWT_SECRET": JWT_SECRET,
                "BILLING_STRIPE_SECRET_KEY": PEER_API_KEY,
                "BILLING_STRIPE_PUBLISHABLE_KEY": PEER_PUBLISHABLE_KEY,
                "BILLING_STRIPE_WEBHOOK_SECRET": webhook_secret,
                "BILLING_STRIPE_API_BASE": peer_process.url,
                "BILLING_STRIPE_TIMEOUT_SECONDS": "5",
                "BILLING_JOBS_ENABLED": "true",
                "BILLING_RECONCILE_INTERVAL_SECONDS": "5",
                "BILLING_RECONCILE_MIN_AGE_SECONDS": "10",
                "BILLING_MAX_PENDING_ORDERS": "100",
                "BILLING_RATE_LIMIT_PURCHASE": "100000/minute",
                "BILLING_RATE_LIMIT_STRIPE_OBJECTS_PER_DAY": "1000000",
                "BILLING_SHUTDOWN_GRACE_SECONDS": "5",
                "BILLING_LOG_LEVEL": "WARNING",
                "BILLING_PORTAL_URL": "http://portal.test",
            }
            migrated = _cli(env, "migrate")
            assert migrated.returncode == 0, migrated.stderr
            token = _cli(env, "service-token", "create", "failover-gateway")
            assert token.returncode == 0, token.stderr
            gateway = {"Authorization": f"Bearer {token.stdout.strip()}"}
            settings = Settings(_env_file=None, environment="test", jwt_secret=JWT_SECRET)
            tokens = {
                u: mint_token(settings, u, email=f"{u}@example.com", ttl=timedelta(hours=2))
                for u in USERS
            }
            admin = mint_token(settings, "ha-admin", admin=True, ttl=timedelta(hours=2))
            cluster = Cluster(env)
            cluster.start()
            peer = StripePeer(peer_process.url, webhook_secret=webhook_secret)
            for n, instance in enumerate(cluster.instances):
                await peer.register_endpoint(
                    f"instance-{n}", secret=webhook_secret, url=f"{instance.url}/v1/webhooks/stripe"
                )
            load = Load(cluster, peer, gateway, tokens, log)
            for user in USERS:
                seeded, _ = await load.definite(
                    "POST", f"/v1/admin/accounts/{user}/adjustments",
                    json={"amount_micros": SEED_MICROS, "reason": "seed", "idempotency_key": user},
                    headers={"Authorization": f"Bearer {admin}"},
                )  # fmt: skip
                assert seeded.status_code == 201, seeded.text
            say(f"/readyz: {await readyz(cluster)}")
            say(await sync_cost(cluster, formation, gateway, log))
            tasks = [asyncio.create_task(d) for d in load.drivers()]
            gaps: list[Gap] = []
            try:
                async with asyncio.timeout(DEADLINE_SECONDS - (time.monotonic() - started) - 90):
                    for name, sig in (("kill", signal.SIGKILL), ("freeze", signal.SIGSTOP)):
                        gap, old = await fault_round(formation, load, name, sig)
                        gaps.append(gap)
                        # Back, the old primary is a standby: in recovery, refusing writes.
                        if not await refuses_writes(old):
                            failures.append(f"{old.name} (the old primary) accepts writes")
                    failures += await controls(formation, load, cluster)
                    await asyncio.sleep(3)
            finally:
                load.stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
            say(
                f"answers: {dict(load.tally.answers)}; unknown outcomes resolved: "
                f"{dict(load.outcomes.resolved)} ({sum(load.outcomes.resolved.values())}); "
                f"unresolved: {len(load.outcomes.unresolved)}; peer call failures "
                f"{load.peer_failures}"
            )
            if load.outcomes.unresolved:
                failures.append(f"unresolved outcomes: {load.outcomes.unresolved[:5]}")
            await cluster.settle()
            await asyncio.sleep(8)  # the peer's webhook retries run out
            primary = await formation.writable()
            assert primary is not None
            await fast_forward(primary.dsn)
            reconciled = _cli(env, "reconcile", "--min-age", "0")
            say(f"reconcile: exit {reconciled.returncode} {reconciled.stdout.strip()}")
            await asyncio.sleep(2)
            failures += await check(primary.dsn, env, peer, load.tally)
            failures += await balances(primary.dsn, load, log.read())
            say(f"final primary {primary.name}; states {await formation.states()}")
            for gap in gaps:
                say("summary " + gap.line())
            await peer.aclose()
    except BaseException as exc:
        failures.append(f"run aborted: {exc.__class__.__name__}: {exc}")
        raise
    finally:
        log.close()
        if cluster is not None:
            for instance in cluster.instances:  # kept with the nodes' logs
                with contextlib.suppress(OSError):
                    shutil.copy(instance.log_path, root / "logs" / f"{instance.name}.log")
            await cluster.close()
        formation.close()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        say(f"run took {time.monotonic() - started:.0f} s")
        if failures:
            say("INVARIANTS BROKEN:\n- " + "\n- ".join(failures))
    if failures:
        return 1
    say("all invariants hold")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-port", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep", action="store_true", help="keep the folder (logs, data)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
