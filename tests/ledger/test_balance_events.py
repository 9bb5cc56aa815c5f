"""The ledger's balance-change registry (`app.ledger.balance_events`): the SQL a change's
statement runs is the subscribers', known only once the wiring sealed it."""

from __future__ import annotations

import pytest

from app.ledger.balance_events import BALANCE_EVENTS, BalanceEvents, BalanceSubscriber


def _ctes(name: str) -> BalanceSubscriber:
    def ctes(source: str, *, now: str, reference: str, rises: bool) -> str:
        return f"{name} AS (SELECT {reference}, {now}, {rises} FROM {source})"

    return BalanceSubscriber(name, ctes)


def test_the_sql_is_refused_before_the_wiring() -> None:
    events = BalanceEvents()
    events.subscribe(_ctes("a"))
    with pytest.raises(RuntimeError, match="wire"):
        events.crossing_ctes("crossing", now="$1")


def test_nobody_subscribes_after_the_wiring_but_the_same_twice() -> None:
    events = BalanceEvents()
    first = _ctes("a")
    events.subscribe(first)
    events.seal()
    events.subscribe(first)  # the wiring ran again: nothing changes
    with pytest.raises(RuntimeError, match="after the wiring"):
        events.subscribe(_ctes("b"))


def test_spending_only_subscribers_and_their_after_commit_work() -> None:
    events = BalanceEvents()
    events.subscribe(_ctes("alerts"))
    charge = BalanceSubscriber(
        "charge", _ctes("charge_due").ctes, spending_only=True, recorded="charge_due"
    )
    events.subscribe(charge)
    events.seal()
    spending = events.crossing_ctes("c", now="$7", reference="$1")
    assert spending.startswith("alerts AS (SELECT $1, $7, False FROM c), charge_due AS (")
    refund = events.crossing_ctes("c", now="$3", rises=True, spending=False)
    assert "charge_due" not in refund
    assert "charge_due" in events.recorded_sql()
    assert events.recorded_sql(spending=False) == "array_remove(ARRAY[]::text[], NULL)"
    kicked: list[set[str]] = []
    events.set_job("charge", kicked.append)
    assert events.jobs_for(["charge"]) == [kicked.append]
    events.set_job("charge", None)
    assert events.jobs_for(["charge"]) == []


def test_the_service_subscribes_alerts_and_auto_topup() -> None:
    # tests/conftest.py runs `app.wiring.wire()` as `create_app()` does.
    sql = BALANCE_EVENTS.crossing_ctes("crossing", now="$7", reference="$1")
    assert sql.index("alert_fired AS") < sql.index("autotopup_recorded AS")
    assert "autotopup_recorded" in BALANCE_EVENTS.recorded_sql()
