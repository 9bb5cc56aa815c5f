"""A spend limit's rules hold in the database, whoever writes the row (migration 0030: checked by
the trigger `spend_limits_rules` when a row is inserted or its rules' columns are set, as the
CHECK constraints before it, with the same error and constraint name); a counter write
(`window_start`, `spent_micros`), the gateway's on every debit, is not checked again."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

_INSERT = """
INSERT INTO spend_limits (id, user_id, scope, limit_micros, period, window_start, spent_micros,
                          created_at, updated_at, set_by, set_by_operator)
VALUES ($1, 'rules-user', $2, $3, $4, now(), 0, now(), now(), $5, $6)
"""

_BROKEN = [
    ("ck_spend_limits_limit_positive", (0, "month", "user", None)),
    ("ck_spend_limits_period_known", (10, "year", "user", None)),
    ("ck_spend_limits_set_by_known", (10, "month", "robot", None)),
    ("ck_spend_limits_operator_named", (10, "month", "operator", None)),
    ("ck_spend_limits_operator_named", (10, "month", "user", "admin-1")),
]


@pytest.mark.parametrize(("constraint", "values"), _BROKEN)
async def test_a_row_breaking_a_rule_is_refused_by_its_constraint_name(
    app: Any, constraint: str, values: tuple[Any, ...]
) -> None:
    async with app.state.usage_store.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await conn.execute(_INSERT, "lim_rules_bad", "account", *values)
    assert refused.value.constraint_name == constraint
    assert refused.value.table_name == "spend_limits"


async def test_an_update_breaking_a_rule_is_refused_and_a_counter_write_is_not_checked(
    app: Any,
) -> None:
    async with app.state.usage_store.pool.acquire() as conn:
        outer = conn.transaction()  # rolled back: the row is the test's alone
        await outer.start()
        try:
            await _update_rules(conn)
        finally:
            await outer.rollback()


async def _update_rules(conn: asyncpg.Connection) -> None:
    await conn.execute(_INSERT, "lim_rules_ok", "key:k", 10, "day", "operator", "admin-1")
    for change, constraint in (
        ("limit_micros = -1", "ck_spend_limits_limit_positive"),
        ("period = 'hour'", "ck_spend_limits_period_known"),
        ("set_by = 'user'", "ck_spend_limits_operator_named"),
        ("set_by_operator = NULL", "ck_spend_limits_operator_named"),
    ):
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            async with conn.transaction():
                await conn.execute(f"UPDATE spend_limits SET {change} WHERE id = 'lim_rules_ok'")
        assert refused.value.constraint_name == constraint
    # Both sides of the operator rule at once: allowed, as the constraint allowed it.
    await conn.execute(
        "UPDATE spend_limits SET set_by = 'user', set_by_operator = NULL, "
        "spent_micros = 25 WHERE id = 'lim_rules_ok'"
    )
    row = await conn.fetchrow("SELECT * FROM spend_limits WHERE id = 'lim_rules_ok'")
    assert (row["set_by"], row["set_by_operator"], row["spent_micros"]) == ("user", None, 25)
    # The counter may pass the limit (a capture above its hold): no rule reads it.
    await conn.execute("UPDATE spend_limits SET spent_micros = 99 WHERE id = 'lim_rules_ok'")
