""" "The available balance changed": what the ledger publishes, and who listens.

The ledger is the lowest money layer: it knows nothing of low-balance alerts or auto top-ups.
They subscribe here at start-up (`app.wiring.wire()`), each with the SQL it adds to a balance
change's own statement, as CTEs over a relation of that statement (`user_id`,
`available_before`, `available_after`): the alerts' crossing rule (`app.alerts.sql`) and, for
spending only, the auto top-up trigger (`app.auto_topup.trigger`). Each rule has ONE form, that
SQL, and a change stays one statement: `crossing_ctes()` joins the subscribers' CTEs, which the
gateway's statements embed after their wallet UPDATE (`app.usage.repository`, built once, after
the wiring); every other posting (`post()`: refunds, disputes, adjustments, top-ups) and the
hold-expiry job call `balance_changed()`, which runs them on their own in one statement.

Only spending — a usage debit, a hold's reserve, a capture: the gateway's statements — may
charge the saved card. A refund, a dispute (chargeback) or a negative adjustment takes money out
of the wallet without the user spending it: charging the card for it would turn a stolen card's
chargeback into charge → chargeback → charge again, up to the monthly limit. Such falls still
run the low-balance alerts (the user should hear that the balance is low, whatever took it
there).

A subscriber may also name a CTE of its own whose rows ask for work once the statement has
committed (`recorded`: the auto top-up attempt just recorded, to be charged at once): the
statement answers which ones did (`recorded_sql()`), and the caller hands the subscriber's job
to the one after-commit queue (`app.db.run_after_commit`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Protocol

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.ledger.repository import WalletRow
from app.models.base import utcnow


class CrossingSql(Protocol):
    """A subscriber's CTEs (no leading `WITH`, no trailing comma) over the relation `source`.
    `now` and `reference` (the change's ledger reference) are SQL expressions; `rises=False`
    for a statement that can only lower the balance."""

    def __call__(self, source: str, *, now: str, reference: str, rises: bool) -> str: ...


AfterCommitJob = Callable[[set[str]], object]
"""`job(user_ids)`: run once the change that recorded something for these users committed."""


@dataclass(frozen=True, slots=True)
class BalanceSubscriber:
    name: str
    ctes: CrossingSql
    spending_only: bool = False
    """Runs only on spending (the gateway's debits, reserves, captures)."""
    recorded: str | None = None
    """A CTE of `ctes` returning `user_id`s that ask for `BalanceEvents.job(name)` after
    commit."""


class BalanceEvents:
    """The subscribers, in the order they subscribed; sealed by the wiring, after which the
    SQL is built (once) and nobody may subscribe any more."""

    def __init__(self) -> None:
        self._subscribers: dict[str, BalanceSubscriber] = {}
        self._jobs: dict[str, AfterCommitJob] = {}
        self._sealed = False

    def subscribe(self, subscriber: BalanceSubscriber) -> None:
        existing = self._subscribers.get(subscriber.name)
        if existing == subscriber:
            return  # the wiring ran twice (the CLI and an app in one process)
        if self._sealed or existing is not None:
            raise RuntimeError(f"balance subscriber {subscriber.name!r} after the wiring")
        self._subscribers[subscriber.name] = subscriber

    def seal(self) -> None:
        self._sealed = True

    def _active(self, spending: bool) -> list[BalanceSubscriber]:
        if not self._sealed:
            raise RuntimeError("balance-change SQL asked for before app.wiring.wire()")
        return [s for s in self._subscribers.values() if spending or not s.spending_only]

    def crossing_ctes(
        self,
        source: str,
        *,
        now: str,
        reference: str = "NULL",
        rises: bool = False,
        spending: bool = True,
    ) -> str:
        """Every subscriber's CTEs for a change whose relation is `source`: for a user with
        no alert and no auto top-up, index probes that find nothing."""
        parts = [
            s.ctes(source, now=now, reference=reference, rises=rises)
            for s in self._active(spending)
        ]
        # A statement always has a CTE here, subscribers or not.
        return ", ".join([*parts, f"balance_changed AS (SELECT user_id FROM {source})"])

    def recorded_sql(self, *, spending: bool = True) -> str:
        """A select-list expression (`text[]`): the subscribers whose `recorded` CTE has rows
        in this statement, for `jobs_for()`."""
        cases = [
            f"CASE WHEN EXISTS (SELECT 1 FROM {s.recorded}) THEN '{s.name}' END"
            for s in self._active(spending)
            if s.recorded is not None
        ]
        return f"array_remove(ARRAY[{', '.join(cases)}]::text[], NULL)"

    def set_job(self, name: str, job: AfterCommitJob | None) -> None:
        """What runs after commit when subscriber `name` recorded something (None: nothing,
        e.g. when jobs do not run in this instance; the periodic job is the safety net)."""
        if job is None:
            self._jobs.pop(name, None)
        else:
            self._jobs[name] = job

    def jobs_for(self, names: list[str]) -> list[AfterCommitJob]:
        return [job for name in names if (job := self._jobs.get(name)) is not None]

    @cached_property
    def _balance_changed(self) -> TextClause:
        ctes = self.crossing_ctes(
            "crossing", now="CAST(:now AS timestamptz)", rises=True, spending=False
        )
        return text(
            f"""
WITH crossing AS (
    SELECT CAST(:user_id AS text) AS user_id, CAST(:before AS bigint) AS available_before,
           CAST(:after AS bigint) AS available_after
), {ctes}
SELECT count(*) FROM balance_changed
"""
        )

    async def balance_changed(
        self,
        session: AsyncSession,
        wallet: WalletRow,
        available_before_micros: int,
        *,
        now: datetime | None = None,
    ) -> None:
        """Apply the subscribers' rules to one change (not spending) that left `wallet` as it
        is (as the change's statement returned it, with its watch). Like the gateway's
        statements, only a wallet with a watch looks anything up, and a fall only when it ends
        below the watch (the highest threshold: above it, nothing can have been crossed)."""
        user_id, after, watch = wallet.user_id, wallet.available_micros, wallet.watch_micros
        if watch is None or after == available_before_micros:
            return
        if after < available_before_micros and after >= watch:
            return
        await session.execute(
            self._balance_changed,
            {
                "user_id": user_id,
                "before": available_before_micros,
                "after": after,
                "now": now or utcnow(),
            },
        )


BALANCE_EVENTS = BalanceEvents()
"""The process's one registry (the SQL it builds is prepared once per connection)."""

crossing_ctes = BALANCE_EVENTS.crossing_ctes
balance_changed = BALANCE_EVENTS.balance_changed
