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
)
from pydantic_core import core_schema

from app.money import MAX_AMOUNT_CHARS, parse_amount

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


CleanStr = Annotated[str, AfterValidator(refuse_control_characters)]
"""A string without control characters or lone surrogates: ids, keys, names, cursors, filters.
Bound its length where it is used (`Field`/`Query`/`Path(max_length=…)`)."""

CleanText = Annotated[str, AfterValidator(refuse_control_characters_but_line_breaks)]
"""Free text (reasons, notes): like `CleanStr`, but tabs and line breaks are allowed."""

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
    Field(max_length=MAX_AMOUNT_CHARS, examples=["20.00"]),
]
"""A USD amount as text, at most 2 decimals (`"20"`, `"20.5"`, `"20.00"`): ASCII digits and at
most one dot, checked by `app.money.AMOUNT_GRAMMAR` before anything else looks at it."""


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


class StrictModel(BaseModel):
    """A request body: unknown fields are rejected (422 naming the field)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Page(BaseModel, Generic[T]):
    """A page of a list: `next_cursor` is null on the last page."""

    data: list[T]
    next_cursor: str | None
