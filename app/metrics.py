"""Prometheus metrics, served at `/metrics`."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
STRIPE_EVENTS = Counter(
    "billing_stripe_events_total", "Stripe webhook events received", ["type", "outcome"]
)
JOB_RUNS = Counter("billing_job_runs_total", "Periodic job runs", ["job", "outcome"])
