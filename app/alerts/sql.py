"""The crossing rule as SQL for PostgreSQL, to embed in the gateway's data-modifying CTE chains
(one statement, one round trip, the same transaction as the debit).

`balance_alert_ctes(source)` returns three CTEs to append to a chain, after a CTE or relation
`source` with columns `user_id`, `available_before`, `available_after` (micros) — typically::

    WITH wallet AS (UPDATE accounts SET … RETURNING user_id, balance_micros, held_micros),
         crossing AS (
             SELECT user_id,
                    balance_micros - held_micros + $4 AS available_before,
                    balance_micros - held_micros AS available_after
             FROM wallet
         ),
         {balance_alert_ctes("crossing")},
         …
    SELECT …

- `alert_fired` disarms the armed thresholds above `available_after` when the balance fell
  (`RETURNING user_id, threshold_micros, available_after`);
- `alert_rearmed` re-arms the disarmed ones at or below `available_after` when it rose;
- `alert_notified` writes one `balance.low` notification per fired threshold, shaped like
  `app.notifications.events.balance_low` (decimal strings computed exactly in `numeric`).

All CTEs of a statement see one snapshot, so `alert_fired` and `alert_rearmed` touch disjoint
rows; a concurrent statement's UPDATE of the same row waits for the lock and re-checks `armed`,
so a crossing fires once (`tests/alerts/test_alerts_sql.py`).
"""

from __future__ import annotations

from app.notifications.sql import NEW_NOTIFICATION_ID


def balance_alert_ctes(source: str, *, now: str = "now()", rises: bool = True) -> str:
    """The three CTEs (no leading `WITH`, no trailing comma) for the relation `source`.
    `rises=False` for a statement that can only lower the balance (a debit, a reserve): its
    `alert_rearmed` is empty without touching the table (less work while the wallet is locked)."""
    rearm = (
        f"""UPDATE balance_alerts a SET armed = true, rearmed_at = {now}
    FROM {source} s
    WHERE a.user_id = s.user_id AND NOT a.armed
      AND s.available_after > s.available_before
      AND a.threshold_micros <= s.available_after
    RETURNING a.user_id, a.threshold_micros"""
        if rises
        else "SELECT NULL::text AS user_id, NULL::bigint AS threshold_micros WHERE false"
    )
    return f"""alert_fired AS (
    UPDATE balance_alerts a SET armed = false, fired_at = {now}
    FROM {source} s
    WHERE a.user_id = s.user_id AND a.armed
      AND s.available_after < s.available_before
      AND a.threshold_micros > s.available_after
    RETURNING a.user_id, a.threshold_micros, s.available_after
), alert_rearmed AS (
    {rearm}
), alert_notified AS (
    INSERT INTO notifications (id, user_id, type, data, created_at)
    SELECT {NEW_NOTIFICATION_ID}, f.user_id, 'balance.low',
           json_build_object(
               'threshold', (f.threshold_micros::numeric / 1000000)::numeric(20, 2)::text,
               'threshold_micros', f.threshold_micros,
               'available', (f.available_after::numeric / 1000000)::numeric(26, 6)::text,
               'available_micros', f.available_after,
               'currency', 'usd'
           ),
           {now}
    FROM alert_fired f
    RETURNING id
)"""
