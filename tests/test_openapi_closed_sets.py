"""The API documents every closed set as an enum (issue 20, item 4).

A client generated from `openapi.json` (`openapi-typescript`, say) can switch exhaustively on an
order's status only when the document lists the statuses; `{"type": "string"}` gives it `string`.
These tests walk the committed `openapi.json` (which `test_openapi.py` keeps equal to what the app
serves) and fail on a closed-set field typed as a bare string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from app import cli

CLOSED_PROPERTIES: dict[str, tuple[str, ...]] = {
    "OrderOut": ("status", "kind", "mode", "currency"),
    "RefundEligibilityOut": ("reason",),
    "RefundRequestOut": ("status", "currency"),
    "AdminRefundRequestOut": ("status", "stripe_status", "currency"),
    "TransactionOut": ("kind", "currency"),
    "BalanceOut": ("currency",),
    "CreditOut": ("source", "kind", "status", "currency"),
    "HoldOut": ("status",),
    "SpendLimitOut": ("period", "set_by", "currency"),
    "AlertsOut": ("currency",),
    "AutoTopupOut": ("status", "currency"),
    "PurchaseOptionsOut": ("currency",),
    "UsageBatchResult": ("status",),
    "HoldCaptureBatchResult": ("status", "hold_status"),
    "Problem": ("hold_status", "order_status"),
    "Health": ("status",),
    "WebhookAckOut": ("outcome",),
    "WebhookEventOut": ("outcome",),
}
"""Component schema -> its properties that hold a value from a closed set."""

PENDING: dict[tuple[str, str], str] = {}
"""(schema, property) of a closed set still typed as a bare string on purpose, until the branch
that makes it an enum is merged (a strict xfail: it fails once the enum is there)."""

CLOSED_PARAMETERS: tuple[tuple[str, str, str], ...] = (
    ("get", "/v1/orders", "status"),
    ("get", "/v1/admin/orders", "status"),
    ("get", "/v1/admin/refund-requests", "status"),
)
"""(method, path, query parameter) filters whose values come from a closed set."""

CLOSED_NAME = re.compile(r"^(status|kind|mode|currency|period|set_by|outcome)$|_status$")
"""A property or parameter with such a name holds a closed set, wherever it appears."""

OPEN_BY_NAME: set[tuple[str, str]] = set()
"""(schema, property) named like a closed set but open; say why next to each entry."""


def _doc() -> dict[str, Any]:
    return dict(json.loads(cli.OPENAPI_PATH.read_text()))


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return _resolve(doc, doc["components"]["schemas"][ref.rsplit("/", 1)[-1]])


def _bare_strings(doc: dict[str, Any], schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The alternatives of `schema` that are strings without an `enum` or `const` (null and
    arrays looked through)."""
    schema = _resolve(doc, schema)
    alternatives = [*schema.get("anyOf", []), *schema.get("oneOf", []), *schema.get("allOf", [])]
    if alternatives:
        for alternative in alternatives:
            yield from _bare_strings(doc, alternative)
        return
    if schema.get("type") == "array":
        yield from _bare_strings(doc, schema.get("items", {}))
    elif schema.get("type", "string") == "string" and not {"enum", "const"} & schema.keys():
        yield schema


def _property(doc: dict[str, Any], component: str, name: str) -> dict[str, Any]:
    schema = doc["components"]["schemas"][component]
    assert name in schema["properties"], f"{component} has no property {name!r}"
    return dict(schema["properties"][name])


def _parameter(doc: dict[str, Any], method: str, path: str, name: str) -> dict[str, Any]:
    for parameter in doc["paths"][path][method]["parameters"]:
        if parameter["name"] == name:
            return dict(parameter["schema"])
    raise AssertionError(f"{method} {path} has no parameter {name!r}")


def _cases() -> Iterator[Any]:
    for component, names in CLOSED_PROPERTIES.items():
        for name in names:
            marks = []
            if (component, name) in PENDING:
                marks = [pytest.mark.xfail(strict=True, reason=PENDING[(component, name)])]
            yield pytest.param(component, name, id=f"{component}.{name}", marks=marks)


@pytest.mark.parametrize(("component", "name"), list(_cases()))
def test_a_closed_set_property_is_an_enum(component: str, name: str) -> None:
    doc = _doc()
    bare = list(_bare_strings(doc, _property(doc, component, name)))
    assert not bare, f"{component}.{name} is a bare string in openapi.json: {bare}"


@pytest.mark.parametrize(("method", "path", "name"), CLOSED_PARAMETERS)
def test_a_closed_set_filter_is_an_enum(method: str, path: str, name: str) -> None:
    doc = _doc()
    bare = list(_bare_strings(doc, _parameter(doc, method, path, name)))
    assert not bare, f"{method} {path} ?{name} is a bare string in openapi.json: {bare}"


def test_every_field_named_like_a_closed_set_is_listed_and_an_enum() -> None:
    """A new `status`, `kind`, `…_status` field anywhere is an enum too (or listed as open)."""
    doc = _doc()
    found = []
    for component, schema in doc["components"]["schemas"].items():
        for name, prop in schema.get("properties", {}).items():
            key = (component, name)
            if not CLOSED_NAME.search(name) or key in PENDING or key in OPEN_BY_NAME:
                continue
            if list(_bare_strings(doc, prop)):
                found.append(f"{component}.{name}")
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                if CLOSED_NAME.search(parameter["name"]) and list(
                    _bare_strings(doc, parameter["schema"])
                ):
                    found.append(f"{method} {path} ?{parameter['name']}")
    assert not found, f"closed sets typed as a bare string: {found}"


def test_the_walk_sees_a_bare_string_through_null_arrays_and_refs() -> None:
    """The guard itself: each shape a bare string can hide in is found."""
    doc: dict[str, Any] = {
        "components": {"schemas": {"S": {"type": "string"}, "E": {"enum": ["a"]}}}
    }
    hidden: list[dict[str, Any]] = [
        {"type": "string"},
        {"anyOf": [{"type": "string"}, {"type": "null"}]},
        {"type": "array", "items": {"type": "string", "maxLength": 32}},
        {"$ref": "#/components/schemas/S"},
        {
            "anyOf": [
                {"type": "array", "items": {"$ref": "#/components/schemas/S"}},
                {"type": "null"},
            ]
        },
    ]
    for schema in hidden:
        assert list(_bare_strings(doc, schema)), schema
    closed: list[dict[str, Any]] = [
        {"type": "string", "enum": ["a", "b"]},
        {"anyOf": [{"$ref": "#/components/schemas/E"}, {"type": "null"}]},
        {"const": "usd", "type": "string"},
        {"type": "array", "items": {"$ref": "#/components/schemas/E"}},
    ]
    for schema in closed:
        assert not list(_bare_strings(doc, schema)), schema
