"""The webhook handler table: built once at start-up, then a plain lookup per event."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from app.config import Settings
from app.main import create_app
from app.purchase.webhooks import on_payment
from app.webhooks import registry


def _no_import(name: str, *args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"a handler lookup imported {name}")


def test_a_lookup_reads_the_table_built_once_and_imports_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = registry.load_handlers()
    monkeypatch.setattr(importlib, "import_module", _no_import)

    assert registry.handler_for("payment_intent.succeeded") is on_payment
    assert registry.handler_for("charge.refunded") is table["charge.refunded"]
    assert registry.load_handlers() is table


def test_an_unknown_type_has_no_handler() -> None:
    registry.load_handlers()
    assert registry.handler_for("customer.subscription.created") is None
    assert registry.handler_for("") is None


def test_the_table_is_frozen() -> None:
    table = registry.load_handlers()
    with pytest.raises(TypeError):
        table["customer.subscription.created"] = on_payment  # type: ignore[index]
    with pytest.raises(RuntimeError, match="frozen"):
        registry.handles("customer.subscription.created")(on_payment)
    assert "customer.subscription.created" not in registry.load_handlers()


def test_every_handler_module_registers_its_types() -> None:
    table = registry.load_handlers()
    assert {
        "payment_intent.succeeded",
        "checkout.session.completed",
        "refund.updated",
        "charge.refunded",
        "payment_method.detached",
        "customer.tax_id.updated",
        "invoice.paid",
    } <= set(table)


async def test_the_lifespan_builds_the_table(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, database: Any
) -> None:
    monkeypatch.setattr(registry, "_TABLE", None)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        assert registry._TABLE is not None
        monkeypatch.setattr(importlib, "import_module", _no_import)
        assert registry.handler_for("payment_intent.succeeded") is on_payment
