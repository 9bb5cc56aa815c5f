"""The zero-sum rule checked per statement for entries, and per ledger transaction for headers.

Until now PostgreSQL ran one deferred trigger per entry and one per transaction at commit, each
summing the transaction's entries: three queries per usage debit and three thousand per batch of
a thousand. Now:

- entries: one AFTER INSERT trigger per *statement*, over its transition table: every ledger
  transaction the statement gives entries to must receive all of them in that statement (so no
  leg is ever added to an existing transaction), with at least two legs summing to zero;
- headers of the gateway's `usage` kind, which are always written in the same statement as their
  entries: one statement-level check that each has entries;
- headers of every other kind (written by the ORM in separate statements): the deferred
  per-transaction check at commit, as before.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = [
    "DROP TRIGGER ledger_entries_balanced ON ledger_entries",
    "DROP FUNCTION ledger_entry_check_balanced()",
    """
    CREATE FUNCTION ledger_entries_check_statement() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        bad record;
    BEGIN
        SELECT n.transaction_id, n.total, n.legs INTO bad
        FROM (SELECT transaction_id, sum(amount_micros) AS total, count(*) AS legs
              FROM new_entries GROUP BY transaction_id) n
        WHERE n.total <> 0 OR n.legs < 2
           OR n.legs <> (SELECT count(*) FROM ledger_entries e
                         WHERE e.transaction_id = n.transaction_id)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ledger transaction % is unbalanced or split across statements '
                '(this statement: sum %, % entries)', bad.transaction_id, bad.total, bad.legs
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_check_statement()
    """,
    "DROP TRIGGER ledger_transactions_balanced ON ledger_transactions",
    """
    CREATE CONSTRAINT TRIGGER ledger_transactions_balanced AFTER INSERT ON ledger_transactions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.kind <> 'usage')
    EXECUTE FUNCTION ledger_transaction_check_balanced()
    """,
    """
    CREATE FUNCTION ledger_usage_headers_check_statement() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        bad text;
    BEGIN
        SELECT n.id INTO bad FROM new_transactions n
        WHERE n.kind = 'usage'
          AND NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.transaction_id = n.id)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'usage transaction % has no entries', bad
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER ledger_usage_headers_have_entries AFTER INSERT ON ledger_transactions
    REFERENCING NEW TABLE AS new_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_usage_headers_check_statement()
    """,
]

DOWNGRADE = [
    "DROP TRIGGER ledger_usage_headers_have_entries ON ledger_transactions",
    "DROP FUNCTION ledger_usage_headers_check_statement()",
    "DROP TRIGGER ledger_transactions_balanced ON ledger_transactions",
    """
    CREATE CONSTRAINT TRIGGER ledger_transactions_balanced AFTER INSERT ON ledger_transactions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION ledger_transaction_check_balanced()
    """,
    "DROP TRIGGER ledger_entries_balanced ON ledger_entries",
    "DROP FUNCTION ledger_entries_check_statement()",
    """
    CREATE FUNCTION ledger_entry_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        total numeric;
        legs bigint;
    BEGIN
        SELECT coalesce(sum(amount_micros), 0), count(*) INTO total, legs
        FROM ledger_entries WHERE transaction_id = NEW.transaction_id;
        IF total <> 0 OR legs < 2 THEN
            RAISE EXCEPTION 'ledger transaction % is unbalanced (sum %, % entries)',
                NEW.transaction_id, total, legs USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE CONSTRAINT TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entry_check_balanced()
    """,
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in DOWNGRADE:
            op.execute(statement)
