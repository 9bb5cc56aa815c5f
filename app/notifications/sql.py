"""The outbox INSERT as plain SQL, for the gateway's asyncpg statements on PostgreSQL.

One more step of a data-modifying CTE chain writes a notification in the same statement (and so
the same transaction) as the debit::

    WITH wallet AS (UPDATE accounts … RETURNING …),
         …,
         notified AS (
             INSERT INTO notifications (id, user_id, type, data, created_at)
             SELECT {NEW_NOTIFICATION_ID}, wallet.user_id, 'balance.low', <json>, $7
             FROM wallet WHERE …
         )
    SELECT …

Only these five columns are given; every delivery column has a server default (pending, due
now). `NEW_NOTIFICATION_ID` draws a unique event id inside the statement, for steps that may
insert several rows; a single row may also take an id from `app.ids.new_id("ntf")` as a
parameter.
"""

from __future__ import annotations

INSERT_COLUMNS = ("id", "user_id", "type", "data", "created_at")

NEW_NOTIFICATION_ID = "('ntf_' || replace(gen_random_uuid()::text, '-', ''))"
"""A SQL expression for a fresh event id (PostgreSQL 13+: `gen_random_uuid()` is built in)."""

INSERT_NOTIFICATION = """
INSERT INTO notifications (id, user_id, type, data, created_at)
VALUES ($1, $2, $3, $4::json, $5)
"""
"""The single-row form: `$1` id, `$2` user id, `$3` type, `$4` data as JSON text, `$5` time."""
