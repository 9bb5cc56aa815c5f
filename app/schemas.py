"""Shapes shared by every capability, and the string types every request input is declared with.

Every string a client sends that is stored or sent to Stripe is a `CleanStr` (ids, keys, names,
cursors, filters) or a `CleanText` (free-form reasons and notes, which may span lines), declared
once here and used by request models, query, path and header parameters alike. Both refuse NUL
(PostgreSQL cannot store it in text), the other C0 and C1 control characters and lone surrogates
(which cannot be encoded as UTF-8), so such input is a 422 before it reaches a handler.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from app.money import AMOUNT_PATTERN, MAX_AMOUNT_CHARS, POSITIVE_AMOUNT_PATTERN, parse_amount

T = TypeVar("T")

CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""C0, DEL, C1 and lone surrogates."""
_CONTROL_BUT_LINE_BREAKS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
"""The same, except tab, line feed and carriage return."""

MAX_JSON_DEPTH = 16


def refuse_control_characters(value: str) -> str:
    """`value` unchanged; `ValueError` if it holds a control character or a lone surrogate."""
    if CONTROL_CHARACTERS.search(value):
        raise ValueError("must not contain control characters")
    return value


def refuse_control_characters_but_line_breaks(value: str) -> str:
    """Like `refuse_control_characters`, but tabs and line breaks are allowed (free text)."""
    if _CONTROL_BUT_LINE_BREAKS.search(value):
        raise ValueError("must not contain control characters")
    return value


def refuse_unclean_json(value: Any, _depth: int = 0) -> Any:
    """A JSON value whose keys and strings are all `CleanText`, nested at most 16 deep."""
    if _depth > MAX_JSON_DEPTH:
        raise ValueError(f"must not be nested more than {MAX_JSON_DEPTH} levels deep")
    if isinstance(value, str):
        refuse_control_characters_but_line_breaks(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_control_characters_but_line_breaks(str(key))
            refuse_unclean_json(item, _depth + 1)
    elif isinstance(value, list):
        for item in value:
            refuse_unclean_json(item, _depth + 1)
    return value


# -- what the schema says of a clean string ------------------------------------------------------
# pydantic leaves a validator function (and a `pattern` applied after one) out of the JSON schema,
# so each clean string type carries a `CleanPattern` that writes the `pattern` the server applies:
# a schema-valid string is never refused (schemathesis' positive-data check, issue 20).

_WHITESPACE = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
"""What `str_strip_whitespace` (Rust's `trim`, Unicode White_Space) removes from a body's
strings before any other check (as regex escapes, valid in Python and ECMA-262 alike)."""
_CONTROL_CLASS = r"\x00-\x1f\x7f-\x9f"
_TEXT_CONTROL_CLASS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"

_ALLOWED = {
    # kind -> (a character allowed anywhere, a character allowed at the ends of a stripped value)
    "str": (f"[^{_CONTROL_CLASS}]", f"[^{_WHITESPACE}{_CONTROL_CLASS}]"),
    "text": (f"[^{_TEXT_CONTROL_CLASS}]", f"[^{_WHITESPACE}{_CONTROL_CLASS}]"),
    # Python's `\s` is White_Space and \x1c-\x1f (controls): spelled out, because a validator
    # reading the pattern as ECMA-262 or with `re.ASCII` would not agree on `\s`.
    "token": (f"[^{_WHITESPACE}{_CONTROL_CLASS}]", f"[^{_WHITESPACE}{_CONTROL_CLASS}]"),
    "ascii": (r"[\x21-\x7e]", r"[\x21-\x7e]"),
}


def clean_pattern(
    kind: str, min_length: int = 0, *, stripped: bool = False, max_length: int | None = None
) -> str:
    """The `pattern` of a clean string of `kind`: as sent (query, path and header parameters;
    their lengths are the schema's `minLength`/`maxLength`), or `stripped` of surrounding
    whitespace first (request bodies, `StrictModel`), where the length counts after stripping,
    so that the bounds are in the pattern (a `maxLength` would count the whitespace too)."""
    any_char, edge = _ALLOWED[kind]
    if not stripped:
        return f"^{any_char}*$"
    ws = f"[{_WHITESPACE}]*"
    if max_length is not None and max_length < 2:
        # One character at the most: only the edge.
        core = edge if max_length == 1 else ""
        return f"^{ws}{core}{ws}$" if min_length >= 1 or not core else f"^{ws}(?:{core})?{ws}$"
    lo = max(min_length - 2, 0)
    if max_length is None:
        middle = f"{any_char}*" if lo == 0 else f"{any_char}{{{lo},}}"
    else:
        middle = f"{any_char}{{{lo},{max_length - 2}}}"
    if min_length <= 0:
        return f"^{ws}(?:{edge}(?:{middle}{edge})?)?{ws}$"
    if min_length == 1:
        return f"^{ws}{edge}(?:{middle}{edge})?{ws}$"
    return f"^{ws}{edge}{middle}{edge}{ws}$"


_KIND_OF_PATTERN = {clean_pattern(kind): kind for kind in _ALLOWED}


def stripped_pattern(core: str) -> str:
    """The `pattern` of a body string that must match `core` once the surrounding whitespace
    the server strips is gone (a `StrictModel` strips before checking)."""
    return f"^[{_WHITESPACE}]*(?:{core})[{_WHITESPACE}]*$"


@dataclass(frozen=True, slots=True)
class CleanPattern:
    """Writes `clean_pattern(kind)` into a clean string's JSON schema (`StrictModel` rewrites
    it for stripped body fields)."""

    kind: str

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        target = handler.resolve_ref_schema(json_schema)
        target["pattern"] = clean_pattern(self.kind)
        return json_schema


def refuse_whitespace(value: str) -> str:
    """`value` unchanged; `ValueError` if it holds whitespace (an id or a key is one token)."""
    if not _TOKEN.fullmatch(value):
        raise ValueError("must not contain whitespace")
    return value


_TOKEN = re.compile(r"\S*")


def refuse_non_ascii_tokens(value: str) -> str:
    """`value` unchanged; `ValueError` unless it is printable ASCII without spaces."""
    if not _ASCII_TOKEN.fullmatch(value):
        raise ValueError("must be printable ASCII without spaces")
    return value


_ASCII_TOKEN = re.compile(r"[\x21-\x7e]*")


CleanStr = Annotated[str, AfterValidator(refuse_control_characters), CleanPattern("str")]
"""A string without control characters or lone surrogates: ids, keys, names, cursors, filters.
Bound its length where it is used (`Field`/`Query`/`Path(max_length=…)`)."""

CleanToken = Annotated[
    str,
    AfterValidator(refuse_control_characters),
    AfterValidator(refuse_whitespace),
    CleanPattern("token"),
]
"""A `CleanStr` without whitespace: the caller's ids and idempotency keys."""

AsciiToken = Annotated[str, AfterValidator(refuse_non_ascii_tokens), CleanPattern("ascii")]
"""Printable ASCII without spaces (an `Idempotency-Key` header)."""

CleanText = Annotated[
    str, AfterValidator(refuse_control_characters_but_line_breaks), CleanPattern("text")
]
"""Free text (reasons, notes): like `CleanStr`, but tabs and line breaks are allowed."""

CLEAN_JSON_REF = "#/components/schemas/CleanJsonObject"
CLEAN_JSON_COMPONENTS: dict[str, dict[str, Any]] = {
    "CleanJsonObject": {
        "type": "object",
        "description": "A JSON object whose keys and strings hold no control characters but tabs "
        f"and line breaks, nested at most {MAX_JSON_DEPTH} deep.",
        "propertyNames": {"pattern": clean_pattern("text")},
        "additionalProperties": {"$ref": "#/components/schemas/CleanJsonValue"},
    },
    "CleanJsonValue": {
        "anyOf": [
            {"type": "string", "pattern": clean_pattern("text")},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
            {"type": "array", "items": {"$ref": "#/components/schemas/CleanJsonValue"}},
            {"$ref": CLEAN_JSON_REF},
        ]
    },
}
"""What `refuse_unclean_json` accepts, as JSON Schema components (recursive, so a document
using `CLEAN_JSON_REF` adds them: `app.openapi.build_openapi` does)."""

CleanJson = Annotated[dict[str, Any], AfterValidator(refuse_unclean_json)]
"""A JSON object whose keys and string values are `CleanText`."""


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken as UTC. `ValueError` when it cannot be
    expressed in UTC (year 1 at +14:00)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("is out of range") from exc


_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def refuse_numbers(value: object) -> object:
    """`value` unchanged unless it is a number (or a string of one): the document promises an
    ISO 8601 `date-time`, and pydantic would otherwise read `0.5` as a Unix timestamp."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-11-01T00:00:00Z")
    return value


UtcDatetime = Annotated[datetime, BeforeValidator(refuse_numbers), AfterValidator(as_utc)]
"""A timestamp filter (ISO 8601): naive means UTC, any offset is converted to UTC, so two of them
always compare."""


def check_amount_grammar(value: object) -> object:
    """`value` unchanged; `ValueError` for a string `app.money.AMOUNT_GRAMMAR` refuses."""
    # Before pydantic's whitespace stripping and before any `Decimal`: the grammar decides.
    if isinstance(value, str):
        parse_amount(value)
    return value


AmountText = Annotated[
    str,
    BeforeValidator(check_amount_grammar),
    Field(
        max_length=MAX_AMOUNT_CHARS,
        examples=["20.00"],
        json_schema_extra={"pattern": AMOUNT_PATTERN},
    ),
]
"""A USD amount as text, at most 2 decimals (`"20"`, `"20.5"`, `"20.00"`): ASCII digits and at
most one dot, checked by `app.money.AMOUNT_GRAMMAR` before anything else looks at it (and
documented as `AMOUNT_PATTERN`)."""


def refuse_zero_amount(value: str) -> str:
    """`value` unchanged; `ValueError` for an amount of 0."""
    if parse_amount(value) <= 0:
        raise ValueError("must be more than 0")
    return value


PositiveAmountText = Annotated[
    AmountText,
    AfterValidator(refuse_zero_amount),
    Field(json_schema_extra={"pattern": POSITIVE_AMOUNT_PATTERN}),
]
"""An `AmountText` more than 0."""


@dataclass(frozen=True, slots=True)
class OneOf:
    """`Annotated[str, OneOf(values)]`: a string from a closed set a domain module owns as a
    tuple or a StrEnum, validated and documented as an `enum` (one form: the domain's)."""

    values: tuple[str, ...]

    def __init__(self, values: Iterable[str]) -> None:
        object.__setattr__(self, "values", tuple(str(v) for v in values))

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.literal_schema(list(self.values))


def _stripped_patterns(schema: dict[str, Any]) -> None:
    """A body's clean strings are stripped before they are checked: their `pattern` says so."""
    kind = _KIND_OF_PATTERN.get(schema.get("pattern", ""))
    if kind is not None:
        # The bounds count after stripping: they go into the pattern, and `maxLength` (which
        # would count the whitespace the server strips) goes.
        schema["pattern"] = clean_pattern(
            kind,
            schema.get("minLength", 0),
            stripped=True,
            max_length=schema.pop("maxLength", None),
        )
    for key in ("anyOf", "oneOf", "allOf"):
        for alternative in schema.get(key, []):
            _stripped_patterns(alternative)
    if isinstance(schema.get("items"), dict):
        _stripped_patterns(schema["items"])


def _document_stripping(schema: dict[str, Any]) -> None:
    for prop in schema.get("properties", {}).values():
        _stripped_patterns(prop)


_EXACT_FLOAT_INTEGERS = 2**53


def whole_float_to_int(value: object) -> object:
    """A float that spells an integer (`5.0`) as that int; anything else unchanged. JSON
    Schema's `integer` includes `5.0`, so a document saying `integer` must not refuse it."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_FLOAT_INTEGERS:
        return int(value)
    return value


WHOLE_FLOATS = BeforeValidator(whole_float_to_int)
"""Last in an `Annotated[int, Field(strict=True, …), WHOLE_FLOATS]`: an integer as JSON Schema
means it, `5` or `5.0`, not `5.5`, `"5"` or `true` (after the `Field`, so that its bounds stay
in the JSON schema)."""


class StrictModel(BaseModel):
    """A request body: unknown fields are rejected (422 naming the field)."""

    model_config = ConfigDict(
        extra="forbid", str_strip_whitespace=True, json_schema_extra=_document_stripping
    )


class Page(BaseModel, Generic[T]):
    """A page of a list: `next_cursor` is null on the last page."""

    data: list[T]
    next_cursor: str | None


OutModel = TypeVar("OutModel", bound=BaseModel)


def render(model: type[OutModel], source: object, **values: Any) -> OutModel:
    """`model` (a response shape) from `source` (a row, a domain object): each of its fields
    that `source` has an attribute of the same name for is copied from it, `values` give the
    fields it renames or formats (they win), and a field in neither takes its default. So a
    renderer spells out only what differs from the row; pydantic still validates every field."""
    copied = {
        name: getattr(source, name)
        for name in model.model_fields
        if name not in values and hasattr(source, name)
    }
    return model(**copied, **values)
