"""`make verify`: the service as two real processes on a fresh PostgreSQL database, with the Stripe
peer as a process, paid, debited, held and refunded concurrently while a random instance is
killed with SIGKILL at random moments and restarted; then the reconciler runs and the money is
checked:

- `torouter-billing ledger-verify` is clean;
- every PaymentIntent paid at the peer is credited exactly once (`topup:<pi>`);
- every gateway request id is debited at most once, and exactly once when it was answered 2xx;
- batches of 1,000 usage events (sent, and resent as the gateway would): every event answered
  `applied` or `replayed` is debited exactly once, none twice, and a batch never answered is
  applied whole or not at all;
- every hold captured with a 2xx (alone, or `captured`/`replayed` in a capture batch) is posted
  exactly once, none twice;
- no refund request made two refunds at the peer, none is debited twice, and every refund the
  peer made for a request is debited exactly once;
- credit lots: each user also has grants and an expiring top-up lot, expiring at random moments
  during the chaos while the instances' sweep job runs every 2 s (and is killed mid-sweep);
  ledger-verify's lot invariants hold, every lot past its expiry was swept, and swept once.

It prints a progress line every few seconds and stops by itself (after `--kills` kills or
`--seconds` of chaos, whichever comes first). Exit status 0 when every invariant holds.

    python -m testing.crash [--kills 20] [--seconds 180] [--seed N] [--keep-db]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from app.auth.jwt import mint_token
from app.config import Settings
from app.models.ledger import Txn
from dev.postgres import server_for_tests
from testing.service_process import CLI, REPO_ROOT, ServiceProcess
from testing.stripe_peer import PeerProcess, StripePeer
from testing.stripe_peer.client import PEER_API_KEY, PEER_PUBLISHABLE_KEY


def _plain(url: str) -> str:
    """A SQLAlchemy URL as the libpq-style DSN asyncpg takes."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


JWT_SECRET = "verify-" + "x" * 40
USERS = [f"crash-user-{n}" for n in range(8)]
DEPOSIT_MICROS = 1_000_000_000  # 1,000 USD each, so debits rarely meet a 402


def say(line: str) -> None:
    """A progress or result line, at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class Tally:
    """What the drivers sent and what they were answered."""

    purchases: int = 0
    paid_pis: dict[str, str] = field(default_factory=dict)  # pi -> order id
    usage_sent: set[str] = field(default_factory=set)
    usage_ok: set[str] = field(default_factory=set)
    batches: list[list[str]] = field(default_factory=list)
    """The request ids of each batch sent."""
    batch_ok: set[str] = field(default_factory=set)
    """Batch events answered `applied` or `replayed`."""
    batches_unanswered: int = 0
    holds_sent: set[str] = field(default_factory=set)
    captured_ok: dict[str, int] = field(default_factory=dict)
    refund_requests: set[str] = field(default_factory=set)
    answers: Counter[str] = field(default_factory=Counter)
    kills: int = 0

    def requests(self) -> int:
        """Requests sent (those held back while no instance was up are not)."""
        return sum(n for k, n in self.answers.items() if k != "no instance up")


class Cluster:
    """The two instances; requests go to a random live one."""

    def __init__(self, env: dict[str, str]) -> None:
        self.instances = [ServiceProcess(env, name=f"crash-{n}") for n in range(2)]
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.ready: set[str] = set()
        self.restart_seconds: list[float] = []
        self._rejoining: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        for instance in self.instances:
            instance.start()
            self.clients[instance.url] = httpx.AsyncClient(base_url=instance.url, timeout=20)
            self.ready.add(instance.url)

    async def crash(self, instance: ServiceProcess, down_for: float) -> None:
        """SIGKILL, stay down `down_for` seconds, start again; it rejoins the load balancer
        once /healthz answers (meanwhile it may be killed again, starting up)."""
        self.ready.discard(instance.url)
        await asyncio.to_thread(instance.kill)
        await asyncio.sleep(down_for)
        instance.spawn()
        task = asyncio.create_task(self._rejoin(instance, time.monotonic()))
        self._rejoining.add(task)
        task.add_done_callback(self._rejoining.discard)

    async def _rejoin(self, instance: ServiceProcess, started: float) -> None:
        proc = instance.proc
        try:
            await asyncio.to_thread(instance.wait_ready)
        except RuntimeError:
            return  # killed while starting; its next start rejoins
        if instance.proc is proc:
            self.restart_seconds.append(time.monotonic() - started)
            self.ready.add(instance.url)

    async def settle(self) -> None:
        """Every instance up and answering."""
        for instance in self.instances:
            if not instance.running:
                instance.spawn()
            await asyncio.to_thread(instance.wait_ready)
            self.ready.add(instance.url)

    async def request(
        self, tally: Tally, method: str, path: str, **kwargs: Any
    ) -> httpx.Response | None:
        """One attempt at a random instance the load balancer would use; None when there was
        no answer (the outcome is unknown to the caller) or no instance was up."""
        if not self.ready:
            tally.answers["no instance up"] += 1
            await asyncio.sleep(0.2)
            return None
        # The load balancer's view: instances that answered their health check. A request may
        # still meet one that dies under it.
        client = self.clients[random.choice(sorted(self.ready))]
        try:
            response = await client.request(method, path, **kwargs)
        except httpx.TransportError:
            tally.answers["no answer"] += 1
            return None
        tally.answers[str(response.status_code)] += 1
        return response

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()
        for instance in self.instances:
            instance.cleanup()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")} | env
    return subprocess.run(
        [str(CLI), *args], cwd=REPO_ROOT, env=full, capture_output=True, text=True, timeout=300
    )


# -- drivers ---------------------------------------------------------------------------------


async def purchaser(
    cluster: Cluster, peer: StripePeer, tally: Tally, tokens: dict[str, str], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        user = random.choice(USERS)
        headers = {"Authorization": f"Bearer {tokens[user]}", "Idempotency-Key": uuid.uuid4().hex}
        body = {"amount": random.choice(["10.00", "20.00", "50.00"]), "mode": "elements"}
        tally.purchases += 1
        for _ in range(20):  # the same key until the order and its PaymentIntent exist
            response = await cluster.request(
                tally, "POST", "/v1/purchase", json=body, headers=headers
            )
            if response is not None and response.status_code == 201:
                secret = response.json()["client_secret"]
                pi = secret.split("_secret_")[0]
                with contextlib.suppress(Exception):
                    paid = await peer.pay_payment_intent(pi)
                    if paid["outcome"] == "succeeded":
                        tally.paid_pis[pi] = response.json()["order"]["id"]
                break
            if response is not None and response.status_code < 500 and response.status_code != 409:
                break
            await asyncio.sleep(0.3)


async def debiter(
    cluster: Cluster, tally: Tally, headers: dict[str, str], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        request_id = f"crash-{uuid.uuid4().hex}"
        body = {
            "user_id": random.choice(USERS),
            "request_id": request_id,
            "amount_micros": random.randint(1_000, 50_000),
        }
        tally.usage_sent.add(request_id)
        for _ in range(random.choice([1, 1, 3])):  # sometimes the gateway retries the same id
            response = await cluster.request(
                tally, "POST", "/v1/internal/usage", json=body, headers=headers
            )
            if response is not None and response.status_code in (200, 201):
                tally.usage_ok.add(request_id)
                break
            await asyncio.sleep(0.1)


BATCH_EVENTS = 1000


async def batcher(
    cluster: Cluster, tally: Tally, headers: dict[str, str], stop: asyncio.Event
) -> None:
    """Batches of 1,000 events over every user (small amounts: the deposits cover them all),
    resent up to three times while unanswered, as the gateway would."""
    while not stop.is_set():
        if not cluster.ready:  # a batch is made only when one can be sent
            await asyncio.sleep(0.2)
            continue
        prefix = f"crash-batch-{uuid.uuid4().hex}"
        ids = [f"{prefix}-{n}" for n in range(BATCH_EVENTS)]
        events: list[dict[str, Any]] = [
            {
                "user_id": random.choice(USERS),
                "request_id": ids[n],
                "amount_micros": random.randint(100, 1_000),
                "model": "m",
                "input_tokens": n,
            }
            for n in range(BATCH_EVENTS)
        ]
        tally.batches.append(ids)
        tally.usage_sent.update(ids)
        for _ in range(random.choice([1, 1, 3])):
            response = await cluster.request(
                tally,
                "POST",
                "/v1/internal/usage/batch",
                json={"events": events},
                headers=headers,
            )
            if response is not None and response.status_code == 200:
                for result in response.json()["results"]:
                    if result["status"] in ("applied", "replayed"):
                        tally.batch_ok.add(result["request_id"])
                break
            await asyncio.sleep(0.1)
        else:
            tally.batches_unanswered += 1


async def holder(
    cluster: Cluster, tally: Tally, headers: dict[str, str], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        hold_id = f"crash-hold-{uuid.uuid4().hex}"
        user = random.choice(USERS)
        tally.holds_sent.add(hold_id)
        reserved = None
        for _ in range(3):
            reserved = await cluster.request(
                tally,
                "POST",
                "/v1/internal/holds",
                json={"user_id": user, "hold_id": hold_id, "amount_micros": 100_000},
                headers=headers,
            )
            if reserved is not None and reserved.status_code in (200, 201):
                break
        if reserved is None or reserved.status_code not in (200, 201):
            continue
        if random.random() < 0.2:
            await cluster.request(
                tally, "POST", f"/v1/internal/holds/{hold_id}/release", json={}, headers=headers
            )
            continue
        amount = random.randint(1, 150_000)
        for _ in range(3):
            captured = await cluster.request(
                tally,
                "POST",
                f"/v1/internal/holds/{hold_id}/capture",
                json={"amount_micros": amount},
                headers=headers,
            )
            if captured is not None and captured.status_code in (200, 201):
                tally.captured_ok[hold_id] = amount
                break
            await asyncio.sleep(0.1)


async def batch_capturer(
    cluster: Cluster, tally: Tally, headers: dict[str, str], stop: asyncio.Event
) -> None:
    """Reserves a few holds one by one, then captures them with ONE
    `POST /v1/internal/holds/captures` (the capture batch statement, one `hold-batch:`
    transaction), as a gateway flushing its captures does; a capture answered `captured` or
    `replayed` must be posted exactly once."""
    while not stop.is_set():
        amounts: dict[str, int] = {}
        for _ in range(random.randint(2, 20)):
            hold_id = f"crash-hold-{uuid.uuid4().hex}"
            tally.holds_sent.add(hold_id)
            reserved = await cluster.request(
                tally,
                "POST",
                "/v1/internal/holds",
                json={
                    "user_id": random.choice(USERS),
                    "hold_id": hold_id,
                    "amount_micros": 100_000,
                },
                headers=headers,
            )
            if reserved is not None and reserved.status_code in (200, 201):
                amounts[hold_id] = random.randint(0, 150_000)
        if not amounts:
            continue
        body = {"captures": [{"hold_id": h, "amount_micros": a} for h, a in amounts.items()]}
        for _ in range(3):
            answer = await cluster.request(
                tally, "POST", "/v1/internal/holds/captures", json=body, headers=headers
            )
            if answer is not None and answer.status_code == 200:
                for result in answer.json()["results"]:
                    if result["status"] in ("captured", "replayed"):
                        tally.captured_ok[result["hold_id"]] = amounts[result["hold_id"]]
                break
            await asyncio.sleep(0.1)


async def refunder(
    cluster: Cluster, tally: Tally, tokens: dict[str, str], stop: asyncio.Event
) -> None:
    asked: set[str] = set()
    while not stop.is_set():
        await asyncio.sleep(0.5)
        candidates = [o for o in tally.paid_pis.values() if o not in asked]
        if not candidates:
            continue
        order_id = random.choice(candidates)
        for user in USERS:  # the order's owner is the one who can see it
            headers = {"Authorization": f"Bearer {tokens[user]}"}
            found = await cluster.request(tally, "GET", f"/v1/orders/{order_id}", headers=headers)
            if found is not None and found.status_code == 200:
                break
        else:
            continue
        if found.json()["status"] != "paid":
            continue
        asked.add(order_id)
        for _ in range(5):
            response = await cluster.request(
                tally,
                "POST",
                f"/v1/orders/{order_id}/refund-requests",
                json={"amount": "1.00", "reason": "crash test"},
                headers=headers,
            )
            if response is not None and response.status_code in (200, 201):
                tally.refund_requests.add(response.json()["id"])
                break
            if response is not None and response.status_code < 500:
                break
            await asyncio.sleep(0.3)


async def killer(
    cluster: Cluster, tally: Tally, kills: int, seconds: float, stop: asyncio.Event
) -> None:
    ends = time.monotonic() + seconds
    while tally.kills < kills and time.monotonic() < ends:
        await asyncio.sleep(random.uniform(1.0, 5.0))
        # A serving instance: the kill lands while requests, webhooks and jobs are in flight.
        serving = [i for i in cluster.instances if i.url in cluster.ready]
        if not serving:
            continue
        victim = random.choice(serving)
        tally.kills += 1
        await cluster.crash(victim, random.uniform(0.2, 1.5))
    stop.set()


async def progress(tally: Tally, started: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(5)
        say(
            f"t={time.monotonic() - started:5.0f}s kills={tally.kills} requests={tally.requests()} "
            f"purchases={tally.purchases} paid={len(tally.paid_pis)} "
            f"debits={len(tally.usage_ok)}/{len(tally.usage_sent)} "
            f"batches={len(tally.batches)} "
            f"captures={len(tally.captured_ok)} refund_requests={len(tally.refund_requests)} "
            f"no_answer={tally.answers['no answer']} 5xx="
            f"{sum(v for k, v in tally.answers.items() if k.startswith('5'))}"
        )


# -- checks ---------------------------------------------------------------------------------


FAST_FORWARD = (
    "UPDATE orders SET next_check_at = NULL "
    "WHERE status IN ('pending', 'processing') AND next_check_at IS NOT NULL",
    "UPDATE refund_requests SET next_attempt_at = now() WHERE next_attempt_at IS NOT NULL",
)


async def fast_forward(dsn: str) -> None:
    """Make every reconciler claim lapse and every check due (what minutes of waiting would)."""
    conn = await asyncpg.connect(dsn)
    try:
        for statement in FAST_FORWARD:
            try:
                done = await conn.execute(statement)
            except asyncpg.PostgresError as exc:  # a column renamed since: say so, go on
                say(f"fast-forward skipped ({exc.__class__.__name__}: {exc})")
                continue
            say(f"fast-forward: {statement.split()[1]} {done}")
        states = await conn.fetch("SELECT status, count(*) AS n FROM orders GROUP BY status")
        say("orders: " + ", ".join(f"{r['status']} {r['n']}" for r in states))
    finally:
        await conn.close()


async def grant_lots(dsn: str, seconds: float) -> int:
    """Give every user expiring credit through the ledger's own `lots.credit()`: two grants and
    a paid lot, each expiring at a random moment of the chaos (some never reached)."""
    from app.db import create_engine, create_session_maker, session_scope
    from app.ledger import lots
    from app.models.base import utcnow
    from app.models.ledger import LotSource

    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_engine(
        Settings(_env_file=None, environment="test", database_url=url, jwt_secret=JWT_SECRET)
    )
    kinds = [
        (LotSource.GRANT, "grant", "promotions"),
        (LotSource.GRANT, "grant", "promotions"),
        (LotSource.PURCHASE, "topup", "stripe"),
    ]
    made = 0
    try:
        maker = create_session_maker(engine)
        async with session_scope(maker) as session:
            now = utcnow()
            for user in USERS:
                for n, (source, kind, account) in enumerate(kinds):
                    await lots.credit(
                        session,
                        Txn(f"{kind}:crash-{user}-{n}", kind),
                        user_id=user,
                        amount_micros=DEPOSIT_MICROS // 4,
                        source=source,
                        account=account,
                        expires_at=now + timedelta(seconds=random.uniform(2, seconds * 1.2)),
                    )
                    made += 1
    finally:
        await engine.dispose()
    return made


async def check(dsn: str, env: dict[str, str], peer: StripePeer, tally: Tally) -> list[str]:
    failures: list[str] = []
    verified = _cli(env, "ledger-verify")
    output = (verified.stdout + verified.stderr).strip().splitlines()
    say(f"ledger-verify: exit {verified.returncode} ({output[-1] if output else ''})")
    if verified.returncode != 0:
        failures.append(f"ledger-verify failed:\n{verified.stdout}\n{verified.stderr}")

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT reference, count(*) AS n FROM ledger_transactions GROUP BY reference"
        )
        count = {r["reference"]: r["n"] for r in rows}
        # A usage debit is its usage record (a batch's events have no transaction of their
        # own), or a usage transaction without one (none since migration 0023): both counted.
        # A capture is its transaction `hold:<id>` (alone) or its record `hold:<id>` (captures
        # applied together share a transaction): both counted, so one applied both ways counts 2.
        rows = await conn.fetch(
            "SELECT reference, count(*) AS n FROM ("
            " SELECT reference FROM usage_records WHERE reference IS NOT NULL"
            " UNION ALL"
            " SELECT t.reference FROM ledger_transactions t WHERE t.kind = 'usage'"
            " AND t.reference LIKE 'usage:%' AND NOT EXISTS (SELECT 1 FROM usage_records u"
            " WHERE u.transaction_id = t.id AND u.reference = t.reference)"
            " UNION ALL"
            " SELECT t.reference FROM ledger_transactions t WHERE t.kind = 'hold_capture'"
            " AND t.reference LIKE 'hold:%') d"
            " GROUP BY reference"
        )
        count.update({r["reference"]: r["n"] for r in rows})
    finally:
        await conn.close()

    paid = [
        pi["id"]
        for pi in await peer.objects("payment_intent")
        if pi["status"] == "succeeded" and pi.get("metadata", {}).get("order_id")
    ]
    wrong = {pi: count.get(f"topup:{pi}", 0) for pi in paid if count.get(f"topup:{pi}", 0) != 1}
    say(f"paid at the peer: {len(paid)}, credited exactly once: {len(paid) - len(wrong)}")
    if wrong:
        failures.append(f"PaymentIntents not credited exactly once: {wrong}")

    doubled = [r for r in tally.usage_sent if count.get(f"usage:{r}", 0) > 1]
    lost = [r for r in tally.usage_ok if count.get(f"usage:{r}", 0) != 1]
    debited = sum(1 for r in tally.usage_sent if count.get(f"usage:{r}", 0) == 1)
    say(
        f"usage ids sent: {len(tally.usage_sent)}, answered 2xx: {len(tally.usage_ok)}, "
        f"debited: {debited}, doubled: {len(doubled)}, 2xx not debited once: {len(lost)}"
    )
    if doubled or lost:
        failures.append(f"usage debited twice: {doubled[:5]}; 2xx not debited once: {lost[:5]}")

    batch_lost = [r for r in tally.batch_ok if count.get(f"usage:{r}", 0) != 1]
    halves = []
    for batch in tally.batches:
        applied = sum(count.get(f"usage:{r}", 0) == 1 for r in batch)
        if applied not in (0, len(batch)):
            halves.append(f"{batch[0].rsplit('-', 1)[0]}: {applied} of {len(batch)}")
    say(
        f"batches: {len(tally.batches)} of {BATCH_EVENTS} events, never answered: "
        f"{tally.batches_unanswered}; events answered applied/replayed: {len(tally.batch_ok)}, "
        f"of them not debited once: {len(batch_lost)}; batches applied in part: {len(halves)}"
    )
    if batch_lost or halves:
        failures.append(
            f"batch events answered but not debited once: {batch_lost[:5]}; "
            f"batches applied in part: {halves[:5]}"
        )

    captures_twice = [h for h in tally.holds_sent if count.get(f"hold:{h}", 0) > 1]
    captures_lost = [
        h
        for h, amount in tally.captured_ok.items()
        if amount > 0 and count.get(f"hold:{h}", 0) != 1
    ]
    say(
        f"holds: {len(tally.holds_sent)}, captured 2xx: {len(tally.captured_ok)}, "
        f"posted twice: {len(captures_twice)}, 2xx not posted once: {len(captures_lost)}"
    )
    if captures_twice or captures_lost:
        failures.append(f"captures twice: {captures_twice[:5]}; lost: {captures_lost[:5]}")

    by_request: Counter[str] = Counter()
    for refund in await peer.objects("refund"):
        request_id = (refund.get("metadata") or {}).get("refund_request_id")
        if request_id and refund["status"] != "failed":
            by_request[request_id] += 1
    twice = {r: n for r, n in by_request.items() if n > 1}
    debited_twice = [r for r in by_request if count.get(f"refund:{r}", 0) > 1]
    not_debited = [r for r in by_request if count.get(f"refund:{r}", 0) != 1]
    say(
        f"refund requests answered: {len(tally.refund_requests)}, refunds at the peer: "
        f"{sum(by_request.values())}, made twice: {len(twice)}, debited twice: "
        f"{len(debited_twice)}, made but not debited once: {len(not_debited)}"
    )
    if twice or debited_twice:
        failures.append(f"refunds made twice at the peer: {twice}; debited twice: {debited_twice}")
    if not_debited:
        failures.append(f"refunds made at the peer but not debited exactly once: {not_debited}")

    conn = await asyncpg.connect(dsn)
    try:
        lots = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE expires_at <= now()) AS expired,"
            " count(*) FILTER (WHERE swept_at IS NOT NULL) AS swept,"
            " count(*) FILTER (WHERE expires_at <= now() - interval '5 seconds'"
            " AND remaining_micros > 0) AS unswept"
            " FROM credit_lots WHERE expires_at IS NOT NULL"
        )
        sweeps = await conn.fetchval(
            "SELECT count(*) FROM ledger_transactions WHERE kind = 'credit_expiry'"
        )
    finally:
        await conn.close()
    say(
        f"expiring lots past expiry: {lots['expired']}, swept: {lots['swept']} ({sweeps} "
        f"postings), past expiry and not swept: {lots['unswept']}"
    )
    if lots["unswept"] or sweeps != lots["swept"]:
        failures.append(
            f"lots: {lots['unswept']} past expiry not swept; {sweeps} sweep postings for "
            f"{lots['swept']} swept lots"
        )
    return failures


# -- main -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    random.seed(args.seed)
    # BILLING_VERIFY_PG, else the server the tests use (5432, or the embedded one).
    embedded = None
    admin_dsn = os.environ.get("BILLING_VERIFY_PG")
    if admin_dsn is None:
        admin_url, embedded = await server_for_tests()
        admin_dsn = _plain(admin_url)
    name = f"billing_verify_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = make_url(admin_dsn).set(database=name).render_as_string(hide_password=False)
    webhook_secret = "whsec_" + secrets.token_hex(24)
    cluster: Cluster | None = None
    say(f"database {name}; seed {args.seed}; up to {args.kills} kills in {args.seconds:g} s")
    try:
        with PeerProcess(webhook_secret=webhook_secret) as peer_process:
            env = {
                "BILLING_ENVIRONMENT": "test",
                "BILLING_DATABASE_URL": dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
                "BILLING_DATABASE_POOL_SIZE": "10",
                "BILLING_JWT_SECRET": JWT_SECRET,
                "BILLING_STRIPE_SECRET_KEY": PEER_API_KEY,
                "BILLING_STRIPE_PUBLISHABLE_KEY": PEER_PUBLISHABLE_KEY,
                "BILLING_STRIPE_WEBHOOK_SECRET": webhook_secret,
                "BILLING_STRIPE_API_BASE": peer_process.url,
                "BILLING_STRIPE_TIMEOUT_SECONDS": "5",
                "BILLING_JOBS_ENABLED": "true",
                "BILLING_RECONCILE_INTERVAL_SECONDS": "5",
                "BILLING_RECONCILE_MIN_AGE_SECONDS": "10",
                "BILLING_LOT_EXPIRY_INTERVAL_SECONDS": "2",
                "BILLING_REFUND_AUTO_APPROVE_MAX": "100.00",
                "BILLING_MAX_PENDING_ORDERS": "100",
                "BILLING_RATE_LIMIT_PURCHASE": "100000/minute",
                "BILLING_RATE_LIMIT_REFUND_REQUEST": "100000/minute",
                "BILLING_RATE_LIMIT_STRIPE_OBJECTS_PER_DAY": "1000000",
                "BILLING_SHUTDOWN_GRACE_SECONDS": "5",
                "BILLING_LOG_LEVEL": "WARNING",
                "BILLING_PORTAL_URL": "http://portal.test",
            }
            migrated = _cli(env, "migrate")
            assert migrated.returncode == 0, migrated.stderr
            token = _cli(env, "service-token", "create", "crash-gateway")
            assert token.returncode == 0, token.stderr
            gateway = {"Authorization": f"Bearer {token.stdout.strip()}"}
            settings = Settings(_env_file=None, environment="test", jwt_secret=JWT_SECRET)
            tokens = {
                u: mint_token(settings, u, email=f"{u}@example.com", ttl=timedelta(hours=2))
                for u in USERS
            }
            admin_token = mint_token(settings, "crash-admin", admin=True, ttl=timedelta(hours=2))

            cluster = Cluster(env)
            cluster.start()
            # Every instance gets every event, as two Stripe endpoints would: concurrent
            # duplicate deliveries to different instances.
            peer = StripePeer(peer_process.url, webhook_secret=webhook_secret)
            for n, instance in enumerate(cluster.instances):
                await peer.register_endpoint(
                    f"instance-{n}", secret=webhook_secret, url=f"{instance.url}/v1/webhooks/stripe"
                )
            tally = Tally()
            for user in USERS:
                deposited = await cluster.request(
                    tally,
                    "POST",
                    f"/v1/admin/accounts/{user}/adjustments",
                    json={
                        "amount_micros": DEPOSIT_MICROS,
                        "reason": "crash test",
                        "idempotency_key": user,
                    },
                    headers={"Authorization": f"Bearer {admin_token}"},
                )
                assert deposited is not None
                assert deposited.status_code == 201, deposited.text
            say(f"credit lots granted: {await grant_lots(dsn, args.seconds)}")

            stop = asyncio.Event()
            started = time.monotonic()
            drivers = [
                *(purchaser(cluster, peer, tally, tokens, stop) for _ in range(3)),
                *(debiter(cluster, tally, gateway, stop) for _ in range(4)),
                # Three per instance on average: one's group in flight, two more grouped as the
                # second in flight (`BatchGroups`), as a busy gateway's flushes are.
                *(batcher(cluster, tally, gateway, stop) for _ in range(6)),
                *(holder(cluster, tally, gateway, stop) for _ in range(2)),
                batch_capturer(cluster, tally, gateway, stop),
                refunder(cluster, tally, tokens, stop),
                progress(tally, started, stop),
            ]
            tasks = [asyncio.create_task(d) for d in drivers]
            try:
                await killer(cluster, tally, args.kills, args.seconds, stop)
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
            chaos = time.monotonic() - started
            restarts = sorted(cluster.restart_seconds) or [0.0]
            say(
                f"chaos over after {chaos:.0f} s: {tally.kills} kills, {tally.requests()} "
                f"requests ({dict(tally.answers)}); restart to ready: median "
                f"{restarts[len(restarts) // 2]:.1f} s, max {restarts[-1]:.1f} s"
            )

            await cluster.settle()
            await asyncio.sleep(10)  # the peer's webhook retries (1, 2, 4 s) run out
            # Stripe retries a webhook for days and our claims lapse after minutes; here time is
            # fast-forwarded instead: every pending order and unknown refund is due now. The
            # instances' own reconcile jobs (every 5 s) and the CLI's runs below then share them.
            await fast_forward(dsn)
            for _ in range(2):
                reconciled = _cli(env, "reconcile", "--min-age", "0")
                say(f"reconcile: exit {reconciled.returncode} {reconciled.stdout.strip()}")
                await asyncio.sleep(3)
            failures = await check(dsn, env, peer, tally)
            await peer.aclose()
    finally:
        if cluster is not None:
            await cluster.close()
        if not args.keep_db:
            admin = await asyncpg.connect(admin_dsn)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
        if embedded is not None:
            embedded.stop()
    if failures:
        say("INVARIANTS BROKEN:\n- " + "\n- ".join(failures))
        return 1
    say("all invariants hold")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep-db", action="store_true")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
