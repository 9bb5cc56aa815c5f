"""The zero-sum rule checked per statement for entries, and per ledger transaction for headers.

Until now PostgreSQL ran one deferred trigger per entry and one per transaction at commit, each
summing the transaction's entries: three queries per usage debit and three thousand per batch of
a thousand. Now:

- entries: one AFTER INSERT trigger per *statement*, over its transition table: every ledger
  transaction the statement gives entries to must receive all of them in that statement (so no
  leg is ever added to an existing transaction), with at least two legs summing to zero;
- headers of the gateway's kinds (`usage`, `hold_capture`), which on PostgreSQL are always
  written in the same statement as their entries (app/usage/repository.py): one statement-level
  check that each has entries;
- headers of every other kind (written by the ORM in separate statements): the deferred
  per-transaction check at commit, as before;
- an entry's references (its transaction and its account): checked by the same statement-level
  trigger, one join over the statement's rows, instead of two foreign-key triggers per row (the
  RI triggers were ~45% of a batch's write); transactions cannot be deleted (append-only) and an
  account with entries cannot be deleted (a trigger).

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
    "ALTER TABLE ledger_entries DROP CONSTRAINT fk_ledger_entries_transaction_id_ledger_transactions",
    "ALTER TABLE ledger_entries DROP CONSTRAINT fk_ledger_entries_account_id_accounts",
    "DROP TRIGGER ledger_entries_balanced ON ledger_entries",
    "DROP FUNCTION ledger_entry_check_balanced()",
    """
    CREATE FUNCTION ledger_entries_check_statement() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        bad record;
    BEGIN
        -- Every probe is a scalar subquery: an EXISTS under OR may be planned as a hashed
        -- subplan, which reads the whole probed table on every statement.
        SELECT n.transaction_id, n.total, n.legs,
               (SELECT t.id FROM ledger_transactions t WHERE t.id = n.transaction_id) IS NULL
                   AS dangling
        INTO bad
        FROM (SELECT transaction_id, sum(amount_micros) AS total, count(*) AS legs
              FROM new_entries GROUP BY transaction_id) n
        WHERE n.total <> 0 OR n.legs < 2
           OR (SELECT t.id FROM ledger_transactions t WHERE t.id = n.transaction_id) IS NULL
           OR n.legs <> (SELECT count(*) FROM ledger_entries e
                         WHERE e.transaction_id = n.transaction_id)
        LIMIT 1;
        IF FOUND AND bad.dangling THEN
            RAISE EXCEPTION 'ledger entry references a missing transaction %',
                bad.transaction_id USING ERRCODE = 'foreign_key_violation';
        ELSIF FOUND THEN
            RAISE EXCEPTION 'ledger transaction % is unbalanced or split across statements '
                '(this statement: sum %, % entries)', bad.transaction_id, bad.total, bad.legs
                USING ERRCODE = 'check_violation';
        END IF;
        SELECT d.account_id INTO bad
        FROM (SELECT DISTINCT account_id FROM new_entries) d
        WHERE (SELECT a.id FROM accounts a WHERE a.id = d.account_id) IS NULL
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ledger entry references a missing account %', bad.account_id
                USING ERRCODE = 'foreign_key_violation';
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
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.kind NOT IN ('usage', 'hold_capture'))
    EXECUTE FUNCTION ledger_transaction_check_balanced()
    """,
    """
    CREATE FUNCTION ledger_gateway_headers_check_statement() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        bad text;
    BEGIN
        SELECT n.id INTO bad FROM new_transactions n
        WHERE n.kind IN ('usage', 'hold_capture')
          AND (SELECT e.id FROM ledger_entries e WHERE e.transaction_id = n.id LIMIT 1) IS NULL
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'gateway transaction % has no entries', bad
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER ledger_gateway_headers_have_entries AFTER INSERT ON ledger_transactions
    REFERENCING NEW TABLE AS new_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_gateway_headers_check_statement()
    """,
    """
    CREATE FUNCTION accounts_refuse_delete_with_entries() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM ledger_entries WHERE account_id = OLD.id) THEN
            RAISE EXCEPTION 'account % has ledger entries and cannot be deleted', OLD.id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN OLD;
    END $$
    """,
    """
    CREATE TRIGGER accounts_keep_entries BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_refuse_delete_with_entries()
    """,
]

FOREIGN_KEYS = [
    ("fk_ledger_entries_transaction_id_ledger_transactions", "ledger_transactions", "transaction_id"),
    ("fk_ledger_entries_account_id_accounts", "accounts", "account_id"),
]

DOWNGRADE = [
    "DROP TRIGGER accounts_keep_entries ON accounts",
    "DROP FUNCTION accounts_refuse_delete_with_entries()",
    "DROP TRIGGER ledger_gateway_headers_have_entries ON ledger_transactions",
    "DROP FUNCTION ledger_gateway_headers_check_statement()",
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
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
    for name, table, column in FOREIGN_KEYS:
        op.create_foreign_key(name, "ledger_entries", table, [column], ["id"], ondelete="RESTRICT")
