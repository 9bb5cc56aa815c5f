"""A stand-in for `accounts` without the ledger's triggers, for the tests that embed the alert and
auto top-up CTEs in a data-modifying CTE chain like the gateway's debit (PostgreSQL only): the
point is the composition and the concurrency of those CTEs, not the ledger (the gateway's own
tests cover it)."""

from __future__ import annotations

from app.config import Settings


def asyncpg_dsn(settings: Settings) -> str:
    """The test database's URL as asyncpg takes it."""
    return settings.database_url.get_secret_value().replace(
        "postgresql+asyncpg://", "postgresql://", 1
    )


def create_wallets_sql(table: str) -> str:
    return (
        f"CREATE TABLE {table} (user_id text PRIMARY KEY, balance_micros bigint NOT NULL,"
        " held_micros bigint NOT NULL)"
    )


def debit_sql(table: str, ctes: str, select: str) -> str:
    """A debit of `$2` from `$1`'s stand-in wallet, its `crossing` (available before and after)
    fed to `ctes`, and `select` over them."""
    return f"""
WITH wallet AS (
    UPDATE {table} SET balance_micros = balance_micros - $2
    WHERE user_id = $1 AND balance_micros - held_micros >= $2
    RETURNING user_id, balance_micros, held_micros
), crossing AS (
    SELECT user_id,
           balance_micros - held_micros + $2 AS available_before,
           balance_micros - held_micros AS available_after
    FROM wallet
), {ctes}
{select}
"""
