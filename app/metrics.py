"""Prometheus metrics, served at `/metrics`: what an operator's dashboard needs.

Every label takes a bounded set of values: route *templates* (never paths), operation names,
event types, ledger kinds, outcome words. Call sites use the small helpers below (one line each),
so the metric names and labels live in this one file.

- `billing_http_requests_total{method, route, status}`, `billing_http_request_duration_seconds
  {method, route}`: requests served by the portal app and the gateway app, and their latency.
- `billing_stripe_events_total{type, outcome}`: webhook events (applied, duplicate, unhandled,
  failed, …).
- `billing_ledger_transactions_total{kind, outcome}` (posted, replayed) and
  `billing_ledger_posted_micros_total{kind}` (money moved: the sum of the positive legs).
- `billing_reconcile_runs_total{outcome}`, `billing_reconcile_orders_total{outcome}` (what
  became of the orders checked), `billing_reconcile_refunds_retried_total`.
- `billing_stripe_requests_total{operation, outcome}` (ok, or the error the call ended in) and
  `billing_stripe_request_duration_seconds{operation}` (retries included).
- `billing_db_pool_connections{pool, state}`: `orm` and `gateway` pools, `in_use`, `idle`,
  `waiting` (callers queued for a connection), `max`.
- `billing_rate_limited_total{limit}`: requests refused with 429 `rate_limited`.
- `billing_usage_debits_combined_total`, `billing_gateway_holds_combined_total{operation}`
  (reserve, capture): gateway writes that went together in one batch.
- `billing_job_runs_total{job, outcome}`, `billing_shutdown_in_flight`.
- `billing_db_unreplicated_commits_total`: COMMITs PostgreSQL said might not have reached the
  synchronous standby (each answered 503); `billing_db_primary_changes_total`: times this
  process moved its connections to another host (`app/primary.py`);
  `billing_db_synchronous_standby` (1/0, as `/readyz` last saw it).

The pool gauges are read at scrape time (`observe_pools`, called by `/metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "billing_http_requests_total", "HTTP requests served", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "billing_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LEDGER_TRANSACTIONS = Counter(
    "billing_ledger_transactions_total", "Ledger transactions posted", ["kind", "outcome"]
)
LEDGER_MICROS = Counter(
    "billing_ledger_posted_micros_total",
    "Money moved by ledger postings, in micro-USD (the sum of each transaction's positive legs)",
    ["kind"],
)
USAGE_DEBITS_COMBINED = Counter(
    "billing_usage_debits_combined_total",
    "Gateway debits that waited for another debit of their wallet and went with it in one batch"
    " (app/usage/combining.py)",
)
HOLDS_COMBINED = Counter(
    "billing_gateway_holds_combined_total",
    "Gateway reserves and captures that waited past the bound of statements in flight and were"
    " applied together by one statement (app/usage/combining.py)",
    ["operation"],
)
STRIPE_EVENTS = Counter(
    "billing_stripe_events_total", "Stripe webhook events received", ["type", "outcome"]
)
DATABASE_UNREPLICATED_COMMITS = Counter(
    "billing_db_unreplicated_commits_total",
    "COMMITs that might not have reached the synchronous standby (answered 503)",
)
DATABASE_PRIMARY_CHANGES = Counter(
    "billing_db_primary_changes_total", "Times the connections moved to another primary host"
)
DATABASE_SYNCHRONOUS_STANDBY = Gauge(
    "billing_db_synchronous_standby",
    "1 when the primary waits for a synchronous standby before a COMMIT returns (read by /readyz)",
)
JOB_RUNS = Counter("billing_job_runs_total", "Periodic job runs", ["job", "outcome"])
RECONCILE_RUNS = Counter("billing_reconcile_runs_total", "Reconciler runs", ["outcome"])
RECONCILE_ORDERS = Counter(
    "billing_reconcile_orders_total",
    "Orders checked by the reconciler, by what became of them",
    ["outcome"],
)
RECONCILE_REFUNDS = Counter(
    "billing_reconcile_refunds_retried_total", "Refunds with an unknown outcome retried"
)
STRIPE_CALLS = Counter(
    "billing_stripe_requests_total", "Stripe API calls", ["operation", "outcome"]
)
STRIPE_LATENCY = Histogram(
    "billing_stripe_request_duration_seconds",
    "Stripe API call latency, the SDK's retries included",
    ["operation"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 12, 20, 30),
)
DB_POOL = Gauge(
    "billing_db_pool_connections",
    "Database pool connections by state (read at scrape)",
    ["pool", "state"],
)
RATE_LIMITED = Counter(
    "billing_rate_limited_total", "Requests refused with 429 rate_limited", ["limit"]
)
SHUTDOWN_IN_FLIGHT = Gauge(
    "billing_shutdown_in_flight", "Requests still being served after SIGTERM"
)


def observe_posting(kind: str, amounts_micros: Iterable[int]) -> None:
    """A ledger transaction was written: count it and the money it moved."""
    LEDGER_TRANSACTIONS.labels(kind, "posted").inc()
    moved = sum(a for a in amounts_micros if a > 0)
    if moved:
        LEDGER_MICROS.labels(kind).inc(moved)


def observe_reconcile(outcomes: dict[str, int], refunds_retried: int = 0) -> None:
    """A reconciler run ended: what became of the orders it checked, refunds it retried.
    Outcome words like `paid (unchanged)` are folded to their first word (bounded labels)."""
    RECONCILE_RUNS.labels("ok").inc()
    for outcome, count in outcomes.items():
        if count:
            RECONCILE_ORDERS.labels(outcome.split(" ", 1)[0]).inc(count)
    if refunds_retried:
        RECONCILE_REFUNDS.inc(refunds_retried)


def observe_rate_limited(limit: str) -> None:
    """A request was refused with 429 `rate_limited` by `limit` (a scope or a daily cap)."""
    RATE_LIMITED.labels(limit).inc()


def _set_pool(name: str, in_use: int, idle: int, waiting: int, maximum: int) -> None:
    DB_POOL.labels(name, "in_use").set(in_use)
    DB_POOL.labels(name, "idle").set(idle)
    DB_POOL.labels(name, "waiting").set(waiting)
    DB_POOL.labels(name, "max").set(maximum)


def _waiters(queue: Any) -> int:
    """Callers blocked on an asyncio queue (`get()` waiters); 0 when it cannot tell."""
    getters = getattr(queue, "_getters", None)
    if getters is None:
        return 0
    return sum(1 for waiter in getters if not waiter.done())


def observe_pools(engine: Any, usage_store: Any = None) -> None:
    """Read the SQLAlchemy pool (`orm`) and the gateway's asyncpg pools (`gateway` for its
    writes, `gateway_reads`) into the `billing_db_pool_connections` gauges. Pools without
    these counters are skipped."""
    pool = getattr(engine, "pool", None)
    checkedout = getattr(pool, "checkedout", None)
    if pool is not None and callable(checkedout) and hasattr(pool, "size"):
        in_use = int(checkedout())
        idle = int(pool.checkedin()) if hasattr(pool, "checkedin") else 0
        # AsyncAdaptedQueuePool keeps its idle connections in an asyncio.Queue; a caller waiting
        # for a connection is a getter on it.
        waiting = _waiters(getattr(getattr(pool, "_pool", None), "_queue", None))
        maximum = int(pool.size()) + max(0, int(getattr(pool, "_max_overflow", 0)))
        _set_pool("orm", in_use, idle, waiting, maximum)
    for name, attribute in (("gateway", "pool"), ("gateway_reads", "read_pool")):
        raw = getattr(usage_store, attribute, None)
        if raw is not None and hasattr(raw, "get_size"):
            size = int(raw.get_size())
            idle = int(raw.get_idle_size())
            _set_pool(
                name,
                size - idle,
                idle,
                _waiters(getattr(raw, "_queue", None)),
                int(raw.get_max_size()),
            )
