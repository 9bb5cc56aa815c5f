"""Migrations build the schema the models describe, from an empty database."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.db import create_engine
from app.migrate import schema_differences, upgrade_head
from testing.fixtures.app import JWT_SECRET, Database


@asynccontextmanager
async def _scratch_engine(database: Database, prefix: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a new, empty database of the tests' server, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    await database.admin(f'CREATE DATABASE "{name}"')
    url = make_url(database.admin_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(Settings(environment="test", database_url=url, jwt_secret=JWT_SECRET))
    try:
        yield engine
    finally:
        await engine.dispose()
        await database.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_migrations_leave_nothing_for_autogenerate(app: Any) -> None:
    # The run's database was created empty and migrated with `alembic upgrade head`.
    assert await schema_differences(app.state.engine) == []
    async with app.state.engine.connect() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    from alembic.script import ScriptDirectory

    from app.migrate import alembic_config

    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_replicas_migrating_at_once_take_turns_under_the_advisory_lock(
    database: Database,
) -> None:
    name = f"billing_migrate_{secrets.token_hex(4)}"
    admin = create_engine(Settings(environment="test", database_url=database.admin_url))
    async with admin.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(database.admin_url).set(database=name).render_as_string(hide_password=False)
    engines = [create_engine(Settings(environment="test", database_url=url)) for _ in range(3)]
    try:
        # Without the lock, the second CREATE TABLE waits for the first and then fails.
        await asyncio.gather(*(upgrade_head(engine) for engine in engines))
        async with engines[0].connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert len(versions) == 1
    finally:
        for engine in engines:
            await engine.dispose()
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def test_existing_service_tokens_keep_every_scope(database: Database) -> None:
    """Tokens made before scopes existed get all three, so existing gateways keep working."""
    from alembic import command
    from alembic.script import ScriptDirectory

    from app.auth.service_tokens import SCOPES
    from app.migrate import alembic_config

    before_scopes = ScriptDirectory.from_config(alembic_config()).get_revision("0015").down_revision

    def _to(revision: str) -> Any:
        def run(connection: Any) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

        return run

    async with _scratch_engine(database, "billing_scopes") as engine:
        async with engine.begin() as conn:
            await conn.run_sync(_to(str(before_scopes)))
            await conn.execute(
                text(
                    "INSERT INTO service_tokens (id, name, token_hash, created_at) "
                    "VALUES ('svt_old', 'old', :hash, CURRENT_TIMESTAMP)"
                ),
                {"hash": "0" * 64},
            )
        await upgrade_head(engine)
        async with engine.connect() as conn:
            scopes = (await conn.execute(text("SELECT scopes FROM service_tokens"))).scalar_one()
        assert set(scopes.split()) == set(SCOPES)


async def _at_revision(engine: Any, revision: str) -> None:
    from alembic import command

    from app.migrate import alembic_config

    def _go(connection: Any) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        if revision.startswith("-"):
            command.downgrade(config, revision[1:])
        else:
            command.upgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(_go)


async def test_0016_makes_a_limit_the_operators_when_the_audit_log_says_an_operator_set_it_last(
    database: Database,
) -> None:
    async with _scratch_engine(database, "billing_0016") as engine:
        await _at_revision(engine, "0013")
        limit = (
            "INSERT INTO spend_limits (id, user_id, scope, limit_micros, period, window_start, "
            "spent_micros, created_at, updated_at) VALUES (:id, :user, :scope, 5000000, 'day', "
            ":t, 0, :t, :t)"
        )
        audit = (
            "INSERT INTO audit_log (id, actor_user_id, action, subject_type, subject_id, "
            "details, created_at) VALUES (:id, :actor, :action, 'spend_limit', :user, "
            ":details, :t)"
        )
        t0, t1, t2 = (datetime(2026, 11, day, 10, tzinfo=UTC) for day in (1, 2, 3))
        async with engine.begin() as conn:
            for id_, user, scope, at in [
                ("lim_ops", "ann", "account", t0),  # set by an operator after it was created
                ("lim_own", "ann", "key:k1", t0),  # never touched by an operator
                ("lim_gone", "bob", "account", t0),  # an operator's, removed: this is the user's
                ("lim_again", "cat", "account", t2),  # an operator's, then the user's again
            ]:
                await conn.execute(text(limit), {"id": id_, "user": user, "scope": scope, "t": at})
            for id_, actor, action, user, scope, at in [
                ("aud_1", "op-1", "spend_limit_set", "ann", "account", t0),
                ("aud_2", "op-2", "spend_limit_set", "ann", "account", t1),
                ("aud_3", "op-1", "spend_limit_set", "ann", "key:k2", t1),
                ("aud_4", "op-1", "spend_limit_set", "bob", "account", t0),
                ("aud_5", "op-1", "spend_limit_removed", "bob", "account", t1),
                ("aud_6", "op-1", "spend_limit_set", "cat", "account", t1),
            ]:
                details = json.dumps({"scope": scope})
                await conn.execute(
                    text(audit),
                    {
                        "id": id_,
                        "actor": actor,
                        "action": action,
                        "user": user,
                        "details": details,
                        "t": at,
                    },
                )
        await _at_revision(engine, "head")
        async with engine.connect() as conn:
            rows = (
                await conn.execute(text("SELECT id, set_by, set_by_operator FROM spend_limits"))
            ).all()
        assert sorted(tuple(r) for r in rows) == [
            ("lim_again", "user", None),
            ("lim_gone", "user", None),
            ("lim_ops", "operator", "op-2"),
            ("lim_own", "user", None),
        ]
        # And back: one row per scope again.
        await _at_revision(engine, "-0013")
        async with engine.connect() as conn:
            count = (await conn.execute(text("SELECT count(*) FROM spend_limits"))).scalar()
        assert count == 4


async def test_0017_splits_each_webhook_outcome_into_the_enum_and_its_detail_and_back(
    database: Database,
) -> None:
    texts = {
        "evt_credited": "credited",
        "evt_unhandled": "ignored: unhandled type",
        "evt_backwards": "ignored: paid -> processing is backwards",
        "evt_flagged": "flagged: amount differs: 5 != 10",
        "evt_replayed": "replayed: already paid",
        "evt_replayed_ignored": "replayed: ignored: no matching order",
        "evt_replayed_unhandled": "replayed: ignored: unhandled type",
        "evt_unapplied": None,
    }
    async with _scratch_engine(database, "billing_0017") as engine:
        await _at_revision(engine, "0016")
        async with engine.begin() as conn:
            for id_, outcome in texts.items():
                await conn.execute(
                    text(
                        "INSERT INTO stripe_events (id, type, livemode, payload, outcome, "
                        "received_at) VALUES (:id, 't', false, '{}', :outcome, :t)"
                    ),
                    {"id": id_, "outcome": outcome, "t": datetime(2026, 11, 1, tzinfo=UTC)},
                )
        await _at_revision(engine, "head")
        async with engine.connect() as conn:
            rows = (
                await conn.execute(text("SELECT id, outcome, outcome_detail FROM stripe_events"))
            ).all()
        assert {r[0]: (r[1], r[2]) for r in rows} == {
            "evt_credited": ("processed", "credited"),
            "evt_unhandled": ("unhandled", None),
            "evt_backwards": ("ignored", "paid -> processing is backwards"),
            "evt_flagged": ("flagged", "amount differs: 5 != 10"),
            "evt_replayed": ("processed", "replayed: already paid"),
            "evt_replayed_ignored": ("ignored", "replayed: no matching order"),
            "evt_replayed_unhandled": ("unhandled", "replayed"),
            "evt_unapplied": (None, None),
        }
        # The database refuses an outcome outside the enum.
        with pytest.raises(IntegrityError, match="ck_stripe_events_outcome_known"):
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE stripe_events SET outcome = 'credited' WHERE id = 'evt_credited'")
                )
        # And back: today's text again.
        await _at_revision(engine, "-0016")
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, outcome FROM stripe_events"))).all()
        assert dict(tuple(r) for r in rows) == texts


_LEGACY_DEBIT = """
WITH t AS (
    INSERT INTO ledger_transactions
        (id, reference, kind, user_id, description, request_hash, details, created_at)
    VALUES (:id, :reference, 'usage', :user, 'usage', :hash, CAST(:details AS json), :t)
    RETURNING id
), w AS (
    UPDATE accounts SET balance_micros = balance_micros - :amount WHERE user_id = :user
    RETURNING id, balance_micros
)
INSERT INTO ledger_entries (transaction_id, account_id, amount_micros, balance_after_micros,
                            created_at)
SELECT t.id, w.id, -CAST(:amount AS bigint), w.balance_micros, :t FROM t, w
UNION ALL
SELECT t.id, 'sys_usage', :amount, NULL, :t FROM t
"""

_RECORD = """
INSERT INTO usage_records (user_id, transaction_id, reference, request_hash, request_id,
                           amount_micros, balance_after_micros, created_at)
VALUES (:user, :id, :reference, :hash, :request_id, :amount, 0, :t)
"""


async def test_0028_gives_each_usage_debit_only_the_ledger_knew_its_record_and_replays_answer_the_original(  # noqa: E501
    database: Database,
) -> None:
    """Debits older than their usage record (before 0009) or whose record has no reference:
    after 0028 every `usage:` reference is in `usage_records` (with the wallet leg's amount
    and balance, the details' key, model, tokens and metadata), which is where the gateway
    now looks a replay up, alone and in batches; a reused id with another body is a conflict."""
    from app.ledger.verify import verify_ledger
    from app.usage.repository import UsageStore
    from app.usage.store import Debited, UsageDebit

    t0 = datetime(2025, 3, 1, 10, tzinfo=UTC)
    async with _scratch_engine(database, "billing_0028") as engine:
        await _at_revision(engine, "0027")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO accounts (id, kind, name, balance_micros, held_micros, "
                    "created_at) VALUES ('sys_usage', 'system', 'usage', 0, 0, :t), "
                    "('sys_adjustments', 'system', 'adjustments', 0, 0, :t) "
                    "ON CONFLICT DO NOTHING"
                ),
                {"t": t0},
            )
            await conn.execute(
                text(
                    "INSERT INTO accounts (id, kind, user_id, balance_micros, held_micros, "
                    "created_at) VALUES ('acc_ann', 'wallet', 'ann', 0, 0, :t), "
                    "('acc_bob', 'wallet', 'bob', 0, 0, :t)"
                ),
                {"t": t0},
            )
            await conn.execute(
                text(
                    "WITH t AS (INSERT INTO ledger_transactions (id, reference, kind, created_at) "
                    "VALUES ('txn_fund', 'adjustment:fund', 'adjustment', :t) RETURNING id), "
                    "w AS (UPDATE accounts SET balance_micros = 1000000 "
                    "WHERE kind = 'wallet' RETURNING id) "
                    "INSERT INTO ledger_entries (transaction_id, account_id, amount_micros, "
                    "balance_after_micros, created_at) "
                    "SELECT t.id, w.id, 1000000, 1000000, :t FROM t, w "
                    "UNION ALL SELECT t.id, 'sys_adjustments', -2000000, NULL, :t FROM t"
                ),
                {"t": t0},
            )
            await conn.execute(
                text(
                    "INSERT INTO credit_lots (id, user_id, source, kind, amount_micros, "
                    "reference, created_at) SELECT 'lot_' || user_id, user_id, 'adjustment', "
                    "'paid', 1000000, 'fund:' || user_id, :t FROM accounts WHERE kind = 'wallet'"
                ),
                {"t": t0},
            )
            details = {
                "api_key_id": "key_1",
                "model": "gpt-4o-mini",
                "input_tokens": 1200,
                "output_tokens": 300,
                "metadata": {"trace": "abc"},
            }
            for id_, user, request_id, amount, detail in [
                ("txn_old", "ann", "req-old", 7000, details),  # before usage records
                ("txn_bare", "bob", "req-bare", 5000, None),  # no details at all
                ("txn_unref", "ann", "req-unref", 3000, None),  # a record with no reference
                ("txn_new", "bob", "req-new", 2000, None),  # a record with its reference
            ]:
                values = {
                    "id": id_,
                    "reference": f"usage:{request_id}",
                    "user": user,
                    "hash": f"hash-{request_id}",
                    "details": json.dumps(detail) if detail else None,
                    "amount": amount,
                    "t": t0,
                    "request_id": request_id,
                }
                await conn.execute(text(_LEGACY_DEBIT), values)
                if id_ == "txn_unref":
                    await conn.execute(text(_RECORD), values | {"reference": None, "hash": None})
                elif id_ == "txn_new":
                    await conn.execute(text(_RECORD), values)
        await _at_revision(engine, "head")
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT reference, transaction_id, user_id, request_id, request_hash, "
                        "api_key_id, model, input_tokens, output_tokens, "
                        "metadata::text AS metadata, amount_micros, balance_after_micros, "
                        "created_at FROM usage_records ORDER BY reference"
                    )
                )
            ).all()
            none = (None, None, None, None, None)
            assert [tuple(r) for r in rows] == [
                (
                    "usage:req-bare",
                    "txn_bare",
                    "bob",
                    "req-bare",
                    "hash-req-bare",
                    *none,
                    5000,
                    995000,
                    t0,
                ),
                ("usage:req-new", "txn_new", "bob", "req-new", "hash-req-new", *none, 2000, 0, t0),
                (
                    "usage:req-old",
                    "txn_old",
                    "ann",
                    "req-old",
                    "hash-req-old",
                    "key_1",
                    "gpt-4o-mini",
                    1200,
                    300,
                    '{"trace": "abc"}',
                    7000,
                    993000,
                    t0,
                ),
                (
                    "usage:req-unref",
                    "txn_unref",
                    "ann",
                    "req-unref",
                    "hash-req-unref",
                    *none,
                    3000,
                    0,
                    t0,
                ),
            ]
        # Replays of the debits only the ledger knew answer the original, alone and in a batch
        # (nothing applied twice); the same id with another body is told apart by its hash.
        url = engine.url.render_as_string(hide_password=False).replace("+asyncpg", "")
        conn_ = await asyncpg.connect(url)
        try:
            store = UsageStore(conn_)
            again = await store.debit(UsageDebit("ann", "req-old", 7000, "hash-req-old", None))
            assert again == Debited("txn_old", "hash-req-old", True, again.wallet)
            outcomes = await store.debit_batch(
                [
                    UsageDebit("ann", "req-old", 7000, "hash-req-old", None),
                    UsageDebit("ann", "req-fresh", 1000, "hash-req-fresh", None),
                    UsageDebit("bob", "req-bare", 5000, "another-body", None),
                ]
            )
            assert all(isinstance(o, Debited) for o in outcomes)
            assert [
                (o.transaction_id, o.request_hash, o.replayed)
                for o in cast(list[Debited], outcomes)
            ] == [
                ("txn_old", "hash-req-old", True),
                (cast(Debited, outcomes[1]).transaction_id, "hash-req-fresh", False),
                ("txn_bare", "hash-req-bare", True),
            ]
            balances = dict(
                await conn_.fetch(
                    "SELECT user_id, balance_micros FROM accounts WHERE user_id IS NOT NULL"
                )
            )
            assert balances == {"ann": 1000000 - 7000 - 3000 - 1000, "bob": 1000000 - 5000 - 2000}
        finally:
            await conn_.close()
        async with AsyncSession(engine) as session:
            assert await verify_ledger(session) == []


async def test_0028_stops_on_a_usage_debit_it_cannot_give_a_record(database: Database) -> None:
    """Two records of one debit, neither carrying its reference: nothing any gateway wrote, and
    no record to choose; the migration stops (rolled back) rather than leave the reference to
    the ledger alone, where no batch would look any more."""
    t0 = datetime(2025, 3, 1, 10, tzinfo=UTC)
    async with _scratch_engine(database, "billing_0028_stop") as engine:
        await _at_revision(engine, "0027")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO accounts (id, kind, name, balance_micros, held_micros, "
                    "created_at) VALUES ('sys_usage', 'system', 'usage', 0, 0, :t) "
                    "ON CONFLICT DO NOTHING"
                ),
                {"t": t0},
            )
            await conn.execute(
                text(
                    "INSERT INTO accounts (id, kind, user_id, balance_micros, held_micros, "
                    "created_at) VALUES ('acc_ann', 'wallet', 'ann', 0, 0, :t)"
                ),
                {"t": t0},
            )
            values = {
                "id": "txn_two",
                "reference": "usage:req-two",
                "user": "ann",
                "hash": "hash-two",
                "details": None,
                "amount": 4000,
                "t": t0,
                "request_id": "req-two",
            }
            await conn.execute(text(_LEGACY_DEBIT), values)
            for _ in range(2):
                await conn.execute(
                    text(_RECORD), values | {"reference": None, "hash": None, "amount": 2000}
                )
        with pytest.raises(RuntimeError, match=r"txn_two \(usage:req-two\)"):
            await _at_revision(engine, "head")
        async with engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
            references = (await conn.execute(text("SELECT reference FROM usage_records"))).all()
        assert version == "0027"
        assert [r[0] for r in references] == [None, None]
