"""Helpers the tests import: one module per domain (ledger, purchase, limits, ...) and a few by
use (concurrency: racing requests; receiver: an HTTP endpoint for the peer's deliveries)."""
