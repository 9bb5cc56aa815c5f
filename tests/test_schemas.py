"""Every string a route accepts is declared with the shared clean-string types, so a new route or
field cannot let a control character through to the database or Stripe."""

from __future__ import annotations

import itertools
import json
import re
import types
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, TypeAdapter, ValidationError

from app import cli
from app.config import Settings
from app.main import create_app
from app.schemas import (
    AmountText,
    CleanStr,
    CleanText,
    CleanToken,
    PositiveAmountText,
    StrictModel,
    check_amount_grammar,
    clean_pattern,
    refuse_control_characters,
    refuse_control_characters_but_line_breaks,
    refuse_non_ascii_tokens,
    refuse_unclean_json,
)
from app.usage.router import OPERATIONS

CLEANERS = {
    refuse_control_characters,
    refuse_control_characters_but_line_breaks,
    check_amount_grammar,  # ASCII digits and a dot only
    refuse_non_ascii_tokens,  # printable ASCII only
}

NOT_YET_CLEAN = {
    # Verified by HMAC against the raw body, never stored.
    ("receive_stripe_event", "stripe_signature"),
    # An event that is not a valid `UsageIn` (say, with a NUL) is answered `invalid`, not stored.
    ("record_usage_batch", "body.events"),
    ("record_usage_batch", "body.events (Any)"),
    # Likewise a capture not a valid `HoldCaptureItem` (tests/usage/test_hold_capture_batch).
    ("capture_holds", "body.captures"),
    ("capture_holds", "body.captures (Any)"),
}


def _cleaned_by(metadata: list[Any] | tuple[Any, ...], cleaners: set[Any]) -> bool:
    return any(
        isinstance(m, AfterValidator | BeforeValidator) and m.func in cleaners for m in metadata
    )


def _bare_strings(annotation: Any, metadata: Any = (), where: str = "") -> Iterator[str]:
    """Where a `str` is reachable in `annotation` without a clean-string validator."""
    if _cleaned_by(metadata, {refuse_unclean_json}):
        return
    if annotation is str:
        if not _cleaned_by(metadata, CLEANERS):
            yield where
        return
    if annotation is Any:
        yield where + " (Any)"
        return
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        yield from _bare_strings(base, [*metadata, *extra], where)
        return
    if origin is Literal:
        return
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            yield from _bare_strings(field.annotation, field.metadata, f"{where}.{name}")
        return
    if origin in (Union, types.UnionType, list, tuple, set, frozenset, dict):
        for arg in get_args(annotation):
            if arg is not type(None):
                yield from _bare_strings(
                    arg, metadata if origin in (Union, types.UnionType) else (), where
                )


def _routes() -> Iterator[APIRoute]:
    settings = Settings(_env_file=None, environment="test", jwt_secret="x" * 40)
    pending = list(create_app(settings).routes)
    while pending:
        route = pending.pop()
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            pending.extend(route.original_router.routes)


def test_every_string_input_of_every_route_refuses_control_characters() -> None:
    bare: list[str] = []
    routes = list(_routes())
    assert len(routes) + len(OPERATIONS) > 30
    for route in routes:
        dependants = [route.dependant]
        while dependants:
            dependant = dependants.pop()
            dependants.extend(dependant.dependencies)
            params = dependant.query_params + dependant.path_params + dependant.header_params
            for param in params:
                if (route.name, param.name) in NOT_YET_CLEAN:
                    continue
                info = param.field_info
                bare.extend(
                    f"{route.name}: {where}"
                    for where in _bare_strings(info.annotation, info.metadata, param.name)
                )
            for param in dependant.body_params:
                info = param.field_info
                bare.extend(
                    f"{route.name}: {where}"
                    for where in _bare_strings(info.annotation, info.metadata, param.name)
                    if (route.name, where) not in NOT_YET_CLEAN
                )
    # The gateway's operations are served by the lean GatewayApp, outside FastAPI's routes.
    for op in OPERATIONS:
        for name, kind in op.params.items():
            bare.extend(f"{op.name}: {where}" for where in _bare_strings(kind, (), name))
        if op.body is not None:
            bare.extend(
                f"{op.name}: {where}"
                for where in _bare_strings(op.body, (), "body")
                if (op.name, where) not in NOT_YET_CLEAN
            )
    assert bare == [], "\n".join(bare)


def test_the_walk_finds_a_bare_string_wherever_it_hides() -> None:
    class Inner(BaseModel):
        fine: CleanStr
        bare: list[str | None]

    class Outer(BaseModel):
        inner: Inner | None
        note: CleanText | None

    assert list(_bare_strings(Outer, (), "body")) == ["body.inner.bare"]
    assert list(_bare_strings(Annotated[CleanStr | None, "query"], (), "q")) == []


# -- the schema says what the server accepts (schemathesis' positive-data check, issue 20) --------

_SAMPLE_CHARACTERS = [
    *"ab \t\n\r\x0b\x0c",
    "\x00",
    "\x1c",
    "\x1f",
    "\x7f",
    "\x85",
    "\x9f",
    "\xa0",
    "\u2003",
    "\u3000",
    "\ufeff",
    "é",
]


def _documented(pattern: str) -> re.Pattern[str]:
    """`pattern` read as a JSON Schema validator reads it: `$` is the end of the string, and
    `\\s` would be ASCII only (schemathesis compiles patterns with `re.ASCII`)."""
    assert pattern.endswith("$")
    return re.compile(pattern[:-1] + r"\Z", re.ASCII)


def _accepts(validate: Any, value: str) -> bool:
    try:
        validate(value)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    ("kind", "kind_type"), [("str", CleanStr), ("text", CleanText), ("token", CleanToken)]
)
@pytest.mark.parametrize(("min_length", "max_length"), [(0, 50), (1, 50), (3, 50), (0, 2), (1, 1)])
def test_a_clean_string_is_documented_with_the_pattern_the_server_applies(
    kind: str, kind_type: Any, min_length: int, max_length: int
) -> None:
    """Every string of up to 3 sample characters: accepted by the server exactly when the
    documented schema allows it, as a parameter (taken as sent) and in a body (stripped first:
    whitespace around a value at its maximum length is accepted, and the schema says so)."""
    constrained = Annotated[kind_type, Field(min_length=min_length, max_length=max_length)]

    class Body(StrictModel):
        value: constrained

    body_schema = Body.model_json_schema()["properties"]["value"]
    parameter = TypeAdapter(constrained)
    parameter_schema = parameter.json_schema()
    assert parameter_schema["pattern"] == clean_pattern(kind)
    in_body, as_parameter = _documented(body_schema["pattern"]), _documented(clean_pattern(kind))
    wrong = []
    for size in range(4):
        for chars in itertools.product(_SAMPLE_CHARACTERS, repeat=size):
            value = "".join(chars)
            schema_valid = (
                bool(in_body.match(value))
                and len(value) >= body_schema.get("minLength", 0)
                and len(value) <= body_schema.get("maxLength", len(value))
            )
            if _accepts(lambda v: Body(value=v), value) != schema_valid:
                wrong.append(("body", value))
            schema_valid = (
                bool(as_parameter.match(value)) and min_length <= len(value) <= max_length
            )
            if _accepts(parameter.validate_python, value) != schema_valid:
                wrong.append(("parameter", value))
    assert wrong == []


_POSITIVE_AMOUNTS = {"20", "20.5", "20.50", "012", "0.01", "999999999999.99"}


@pytest.mark.parametrize(
    ("amount_type", "accepted"),
    [
        (AmountText, {"0", "0.0", "0.00", "00", *_POSITIVE_AMOUNTS}),
        (PositiveAmountText, _POSITIVE_AMOUNTS),
    ],
)
def test_an_amount_is_documented_with_the_grammar_the_server_applies(
    amount_type: Any, accepted: set[str]
) -> None:
    class Body(StrictModel):
        amount: amount_type

    pattern = _documented(Body.model_json_schema()["properties"]["amount"]["pattern"])
    candidates = accepted | {
        *("0.00", "0.01", "1.234", ".5", "5.", "-1", "+1", "1e3", " 1", "1 ", "1,00", "\u0661"),
        *("1000000000000", "0x10", "", "0.0.1", "NaN"),
    }
    for value in candidates:
        assert _accepts(lambda v: Body(amount=v), value) == (value in accepted), value
        assert bool(pattern.match(value)) == (value in accepted), value


def test_every_clean_string_input_in_openapi_json_has_a_pattern() -> None:
    """Each string a request sends is documented with a `pattern` (or an enum, a format, or the
    Stripe event body and signature, which the server takes as they come)."""
    doc = json.loads(cli.OPENAPI_PATH.read_text())
    schemas = doc["components"]["schemas"]
    missing = []

    def walk(schema: dict[str, Any], where: str) -> None:
        if "$ref" in schema:
            return  # a component; walked on its own when it is a request body
        for key in ("anyOf", "oneOf", "allOf"):
            for alternative in schema.get(key, []):
                walk(alternative, where)
        if schema.get("type") == "array":
            walk(schema.get("items", {}), f"{where}[]")
        if schema.get("type") == "string" and not {"pattern", "enum", "const", "format"} & set(
            schema
        ):
            missing.append(where)

    inputs = set()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                if parameter["name"] != "Stripe-Signature":
                    walk(parameter["schema"], f"{method} {path} {parameter['name']}")
            content = operation.get("requestBody", {}).get("content", {})
            ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
            if ref:
                inputs.add(ref.rsplit("/", 1)[-1])
    for name in sorted(inputs | {"UsageIn"}):
        for prop, schema in schemas[name].get("properties", {}).items():
            walk(schema, f"{name}.{prop}")
    assert missing == []


def test_an_integer_input_takes_what_json_schema_calls_an_integer() -> None:
    """`5.0` is an `integer` to JSON Schema (and schemathesis sends it): accepted as 5; a
    fraction, a string or a boolean is not."""
    from app.usage.schemas import UsageIn

    def amount(raw: str) -> int | None:
        body = f'{{"user_id": "u", "request_id": "r", "amount_micros": {raw}}}'
        try:
            return UsageIn.model_validate_json(body).amount_micros
        except ValidationError:
            return None

    assert [amount(v) for v in ("5", "5.0", "5.5", '"5"', "true", "0.0")] == [
        5,
        5,
        None,
        None,
        None,
        None,
    ]


def test_no_constraint_leaks_into_openapi_json_under_pydantic_s_own_name() -> None:
    """A bound pydantic cannot translate (`gt` on a type wrapped by a validator) is written as
    `gt`, which no JSON Schema reader knows: the bound would be silently lost."""
    doc = json.loads(cli.OPENAPI_PATH.read_text())
    leaks: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("integer", "number", "string"):
                leaks.extend(f"{where}.{k}" for k in ("gt", "ge", "lt", "le") if k in node)
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}[{index}]")

    walk(doc, "")
    assert leaks == []
