"""The ledger's invariants: `verify_ledger`, the admin endpoint and `torouter-billing
ledger-verify` find a broken wallet; the database refuses to rewrite history."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.config import Settings
from app.db import session_scope
from app.ledger import lots
from app.ledger.service import Leg, UnbalancedTransaction, post
from app.ledger.verify import verify_ledger
from app.models.ledger import LotSource, Txn
from testing.fixtures.app import JWT_SECRET
from testing.helpers.ledger import debit, deposit

ROOT = Path(__file__).resolve().parents[2]
_TOPUP: Any = {"source": LotSource.PURCHASE, "account": "stripe"}


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "BILLING_ENVIRONMENT": "test",
        "BILLING_DATABASE_URL": settings.database_url.get_secret_value(),
        "BILLING_JWT_SECRET": JWT_SECRET,
        "BILLING_LOG_JSON": "false",
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def break_wallet(session_maker: Any, user_id: str, delta: int) -> None:
    async with session_scope(session_maker) as session:
        await session.execute(
            text("UPDATE accounts SET balance_micros = balance_micros + :d WHERE user_id = :u"),
            {"d": delta, "u": user_id},
        )


@pytest.fixture
async def spent_wallet(
    client: httpx.AsyncClient, admin_headers: dict[str, str], gateway_headers: dict[str, str]
) -> None:
    await deposit(client, admin_headers, "alice", 1_000_000)
    assert (await debit(client, gateway_headers, "alice", 7_000)).status_code == 201


@pytest.mark.usefixtures("spent_wallet")
async def test_the_cli_passes_a_sound_ledger_and_fails_a_broken_wallet(
    settings: Settings, session_maker: Any
) -> None:
    sound = run_cli(settings, "ledger-verify")
    assert sound.returncode == 0, sound.stderr
    assert sound.stdout == ""
    assert "verifying 2 transactions, 4 entries, 1 wallets" in sound.stderr
    assert "ledger verify ok" in sound.stderr

    await break_wallet(session_maker, "alice", 1)
    try:
        broken = run_cli(settings, "ledger-verify")
    finally:
        await break_wallet(session_maker, "alice", -1)
    assert broken.returncode == 1
    assert "wallet_balance_matches_entries" in broken.stdout
    assert "stored balance 993001 but entries sum to 993000" in broken.stdout
    assert "1 violation(s)" in broken.stderr


@pytest.mark.usefixtures("spent_wallet")
async def test_the_admin_endpoint_reports_each_violation(
    client: httpx.AsyncClient, admin_headers: dict[str, str], session_maker: Any
) -> None:
    sound = await client.get("/v1/admin/ledger/verify", headers=admin_headers)
    assert sound.json() == {"ok": True, "violations": []}
    async with session_scope(session_maker) as session:
        await session.execute(text("UPDATE accounts SET held_micros = 5 WHERE user_id = 'alice'"))
    try:
        broken = (await client.get("/v1/admin/ledger/verify", headers=admin_headers)).json()
    finally:
        async with session_scope(session_maker) as session:
            await session.execute(
                text("UPDATE accounts SET held_micros = 0 WHERE user_id = 'alice'")
            )
    assert broken["ok"] is False
    assert [v["rule"] for v in broken["violations"]] == ["held_matches_active_holds"]
    assert broken["violations"][0]["detail"] == "held 5 but active holds sum to 0"


@pytest.mark.usefixtures("spent_wallet")
async def test_a_hold_whose_account_is_not_its_users_wallet_is_reported(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    gateway_headers: dict[str, str],
    session_maker: Any,
) -> None:
    # Holds carry no foreign key to their wallet (migration 0022): the verify checks it.
    reserved = await client.post(
        "/v1/internal/holds",
        json={"user_id": "alice", "hold_id": "h-lost", "amount_micros": 5_000},
        headers=gateway_headers,
    )
    assert reserved.status_code == 201, reserved.text
    move = text("UPDATE holds SET account_id = :account WHERE id = 'h-lost'")
    async with session_scope(session_maker) as session:
        account = (
            await session.execute(text("SELECT account_id FROM holds WHERE id = 'h-lost'"))
        ).scalar_one()
        await session.execute(move, {"account": "acc_gone"})
    try:
        broken = (await client.get("/v1/admin/ledger/verify", headers=admin_headers)).json()
    finally:
        async with session_scope(session_maker) as session:
            await session.execute(move, {"account": account})
    assert sorted((v["rule"], v["subject"]) for v in broken["violations"]) == sorted(
        [("hold_wallet_exists", "h-lost"), ("held_matches_active_holds", account)]
    )


@pytest.mark.usefixtures("spent_wallet")
async def test_a_usage_record_that_the_wallet_leg_does_not_match_is_a_violation(
    client: httpx.AsyncClient, admin_headers: dict[str, str], session_maker: Any
) -> None:
    change = "UPDATE usage_records SET amount_micros = amount_micros + :d WHERE user_id = 'alice'"
    async with session_scope(session_maker) as session:
        await session.execute(text(change), {"d": 1})
    try:
        broken = (await client.get("/v1/admin/ledger/verify", headers=admin_headers)).json()
    finally:
        async with session_scope(session_maker) as session:
            await session.execute(text(change), {"d": -1})
    assert [v["rule"] for v in broken["violations"]] == ["usage_records_match_wallet_legs"]
    assert broken["violations"][0]["detail"] == (
        "usage records sum to 7001 where the wallet leg takes 7000"
    )


async def test_an_unbalanced_posting_is_refused_before_it_reaches_the_database(
    session_maker: Any,
) -> None:
    for legs in (
        [Leg.wallet("alice", 5), Leg.account("stripe", -4)],
        [Leg.wallet("alice", 5)],
        [Leg.wallet("alice", 0), Leg.account("stripe", 0)],
    ):
        async with session_maker() as session:
            with pytest.raises(UnbalancedTransaction):
                await post(session, Txn("x", "topup"), legs)
    with pytest.raises(ValueError, match="unknown system account"):
        Leg.account("bank", 5)


async def test_a_repeated_reference_moves_money_once(session_maker: Any) -> None:
    credit: Any = {"user_id": "alice", "amount_micros": 5_000}
    txn = Txn("topup:pi_1", "topup")
    async with session_scope(session_maker) as session:
        first = (await lots.credit(session, txn, **credit, **_TOPUP)).posting
    async with session_scope(session_maker) as session:
        second = (await lots.credit(session, txn, **credit, **_TOPUP)).posting
    assert not first.replayed
    assert second.replayed
    assert second.transaction.id == first.transaction.id
    assert second.wallets["alice"].balance_micros == 5_000


@pytest.mark.usefixtures("spent_wallet")
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET amount_micros = amount_micros * 2",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_transactions SET kind = 'topup'",
        "DELETE FROM ledger_transactions",
    ],
)
async def test_the_database_refuses_to_rewrite_history(session_maker: Any, statement: str) -> None:
    with pytest.raises(DBAPIError, match="append-only"):
        async with session_scope(session_maker) as session:
            await session.execute(text(statement))


async def post_one_legged_transaction(session_maker: Any) -> None:
    async with session_scope(session_maker) as session:
        await session.execute(
            text(
                "INSERT INTO ledger_transactions (id, reference, kind, created_at) "
                "VALUES ('txn_x', 'manual:1', 'adjustment', now())"
            )
        )
        await session.execute(
            text(
                "INSERT INTO ledger_entries (transaction_id, account_id, amount_micros, "
                "created_at) VALUES ('txn_x', 'sys_adjustments', 5, now())"
            )
        )


@pytest.mark.usefixtures("spent_wallet")
async def test_postgres_refuses_an_unbalanced_transaction_at_commit(session_maker: Any) -> None:
    with pytest.raises(DBAPIError, match="unbalanced"):
        await post_one_legged_transaction(session_maker)
    async with session_scope(session_maker) as session:
        assert await verify_ledger(session) == []


@pytest.mark.usefixtures("spent_wallet")
async def test_postgres_refuses_a_leg_added_to_an_existing_transaction(session_maker: Any) -> None:
    """Even a balanced pair: a transaction's entries all arrive in the statement that writes
    them (the statement-level zero-sum trigger), so history cannot grow new legs."""
    with pytest.raises(DBAPIError, match="unbalanced or split"):
        async with session_scope(session_maker) as session:
            await session.execute(
                text(
                    "INSERT INTO ledger_entries (transaction_id, account_id, amount_micros, "
                    "created_at) SELECT id, 'sys_adjustments', v, now() FROM ledger_transactions, "
                    "(VALUES (5), (-5)) AS legs(v) WHERE kind = 'usage'"
                )
            )
    async with session_scope(session_maker) as session:
        assert await verify_ledger(session) == []


@pytest.mark.parametrize("kind", ["usage", "hold_capture"])
async def test_postgres_refuses_a_gateway_transaction_without_entries(
    session_maker: Any, kind: str
) -> None:
    """The gateway's kinds are checked per statement (header and entries arrive together)."""
    with pytest.raises(DBAPIError, match="has no entries"):
        async with session_scope(session_maker) as session:
            await session.execute(
                text(
                    "INSERT INTO ledger_transactions (id, reference, kind, created_at) "
                    "VALUES ('txn_y', 'lonely', :kind, now())"
                ),
                {"kind": kind},
            )


async def post_entries_for_a_missing_account(session_maker: Any) -> None:
    async with session_scope(session_maker) as session:
        await session.execute(
            text(
                "INSERT INTO ledger_transactions (id, reference, kind, created_at) "
                "VALUES ('txn_z', 'manual:z', 'adjustment', CURRENT_TIMESTAMP)"
            )
        )
        await session.execute(
            text(
                "INSERT INTO ledger_entries (transaction_id, account_id, amount_micros, "
                "created_at) VALUES ('txn_z', 'acc_nobody', 5, CURRENT_TIMESTAMP), "
                "('txn_z', 'sys_adjustments', -5, CURRENT_TIMESTAMP)"
            )
        )


@pytest.mark.usefixtures("spent_wallet")
async def test_an_entry_for_a_missing_account_is_refused(session_maker: Any) -> None:
    """Entries carry no foreign keys (triggers check references, set-based on PostgreSQL)."""
    with pytest.raises(DBAPIError, match="references a missing"):
        await post_entries_for_a_missing_account(session_maker)


@pytest.mark.usefixtures("spent_wallet")
async def test_a_wallet_with_entries_cannot_be_deleted(session_maker: Any) -> None:
    with pytest.raises(DBAPIError, match="cannot be deleted"):
        async with session_scope(session_maker) as session:
            await session.execute(text("DELETE FROM accounts WHERE user_id = 'alice'"))
