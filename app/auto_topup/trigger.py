"""The auto top-up trigger: a balance change that takes the available balance from at or above
an active auto top-up's threshold to below it records ONE pending attempt, in the same
transaction (the partial unique index `uq_auto_topups_user_in_flight` allows one in flight per
user, so concurrent crossings record one between them). Charging it is the job's, off the
request path.

`auto_topup_ctes()` is its one form, CTEs for a statement's chain (`source` as for
`app.alerts.sql.balance_alert_ctes`), run by `app.ledger.balance_events.crossing_ctes`."""

from __future__ import annotations

from app.models.base import one_of
from app.models.payment_methods import IN_FLIGHT_ATTEMPT_STATUSES, AttemptStatus, AutoTopupStatus


def auto_topup_ctes(source: str, *, reference: str = "NULL", now: str = "now()") -> str:
    """Two CTEs (no leading `WITH`) for a relation `source` with `user_id`,
    `available_before`, `available_after`: `autotopup_due` (the active settings whose threshold
    this change crossed) and `autotopup_recorded` (`RETURNING id, user_id` of the attempt
    recorded; empty when one was already in flight). `reference` is a SQL expression for the
    debit's ledger reference (e.g. `$1`)."""
    return f"""autotopup_due AS (
    SELECT s.user_id, s.amount_micros, s.payment_method_id
    FROM auto_topup_settings s JOIN {source} c ON c.user_id = s.user_id
    WHERE s.status = '{AutoTopupStatus.ACTIVE}' AND s.payment_method_id IS NOT NULL
      AND c.available_before >= s.threshold_micros
      AND c.available_after < s.threshold_micros
), autotopup_recorded AS (
    INSERT INTO auto_topups
        (id, user_id, status, amount_micros, payment_method_id, trigger_reference,
         created_at, updated_at)
    SELECT 'atu_' || replace(gen_random_uuid()::text, '-', ''), user_id, '{AttemptStatus.PENDING}',
           amount_micros, payment_method_id, {reference}, {now}, {now}
    FROM autotopup_due
    ON CONFLICT (user_id) WHERE {one_of("status", IN_FLIGHT_ATTEMPT_STATUSES)} DO NOTHING
    RETURNING id, user_id
)"""
