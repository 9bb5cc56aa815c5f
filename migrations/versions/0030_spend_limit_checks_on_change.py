"""A limit's rules are checked when they are written, not on every counter write (issue 22, the
key-limit row): `spend_limits`' four CHECK constraints become one AFTER INSERT OR UPDATE OF the
checked columns row trigger that raises the same error (SQLSTATE 23514, `check_violation`, under
the same constraint name) for the same rows.

PostgreSQL evaluates every CHECK constraint of a table on every UPDATE, whatever columns it sets,
and each statement compiles them again (the constraints' stored trees read back and planned, then
made executable, on the statement's first row): for the gateway's single debit carrying a key
with a limit, ~16 µs of its ~500 µs of PostgreSQL CPU went there (`perf`: ExecConstraints 5.9%
of the backend's samples with the key, 2.6% without), for a counter write (`window_start`,
`spent_micros`) that none of the four rules reads. A row trigger with a column list is skipped
for an UPDATE that sets none of its columns, before anything is fetched or run (an AFTER one:
a BEFORE row trigger first locks and fetches the old row whatever its columns).

The rules are unchanged: `limit_micros > 0`; `period` one of day, week, month, total; `set_by`
operator or user; an operator's limit names the operator and a user's names none. Downgrade
puts the constraints back (the rows already satisfy them).

Revision ID: 0030
Revises: 0029
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0030"
down_revision: str | None = "0029"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECKS = {
    "ck_spend_limits_limit_positive": "{row}limit_micros > 0",
    "ck_spend_limits_period_known": "{row}period IN ('day', 'week', 'month', 'total')",
    "ck_spend_limits_set_by_known": "{row}set_by IN ('operator', 'user')",
    "ck_spend_limits_operator_named": (
        "({row}set_by = 'operator') = ({row}set_by_operator IS NOT NULL)"
    ),
}
"""Each rule by its constraint's name, as migrations 0009 and 0016 created them (`{row}`: the
trigger's `NEW.`, nothing in a constraint)."""

_COLUMNS = "limit_micros, period, set_by, set_by_operator"
"""The columns the rules read: an UPDATE setting none of them is not checked again."""


def _check(name: str, rule: str) -> str:
    # As a CHECK constraint: a rule that is null (unknown) passes.
    return f"""
    IF NOT coalesce({rule.format(row="NEW.")}, true) THEN
        RAISE EXCEPTION 'new row for relation "spend_limits" violates check constraint "{name}"'
            USING ERRCODE = 'check_violation', CONSTRAINT = '{name}', TABLE = 'spend_limits',
                  SCHEMA = current_schema();
    END IF;"""


def upgrade() -> None:
    body = "".join(_check(name, rule) for name, rule in CHECKS.items())
    op.execute(f"""
    CREATE FUNCTION spend_limits_check_rules() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN{body}
        RETURN NULL;
    END $$""")
    op.execute(f"""
    CREATE TRIGGER spend_limits_rules AFTER INSERT OR UPDATE OF {_COLUMNS} ON spend_limits
    FOR EACH ROW EXECUTE FUNCTION spend_limits_check_rules()""")
    for name in CHECKS:
        op.execute(f"ALTER TABLE spend_limits DROP CONSTRAINT {name}")


def downgrade() -> None:
    op.execute("DROP TRIGGER spend_limits_rules ON spend_limits")
    op.execute("DROP FUNCTION spend_limits_check_rules()")
    for name, rule in CHECKS.items():
        op.execute(f"ALTER TABLE spend_limits ADD CONSTRAINT {name} CHECK ({rule.format(row='')})")
