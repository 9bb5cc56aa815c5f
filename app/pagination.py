"""Opaque keyset cursors: base64url of the last row's sort key, so pages stay stable while new
rows arrive."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, TypeVar, cast

from fastapi import Depends, Query

from app.errors import ValidationFailed
from app.schemas import CONTROL_CHARACTERS as _CONTROL
from app.schemas import CleanStr

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_BIGINT = range(-(2**63), 2**63)
"""What a sort key's integer may be: it is compared with a BIGINT column."""
_MAX_KEY_CHARS = 255
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_INSTANT_MICROS = range(0, (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND + 1)
"""What an instant in a cursor may be (microseconds since 1970): a BIGINT can count far past
9999-12-31, the last instant a `datetime` holds."""


def _is_sort_key_part(value: Any) -> bool:
    """An integer that fits a BIGINT, or a short string without control characters."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value in _BIGINT
    if isinstance(value, str):
        return len(value) <= _MAX_KEY_CHARS and not _CONTROL.search(value)
    return False


def encode_cursor(*key: Any) -> str:
    """A cursor that resumes after the row with this sort key."""
    raw = json.dumps(list(key), separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    """The sort key inside a cursor; 422 when it was not made by `encode_cursor`."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid_cursor() from exc
    if not isinstance(key, list) or len(key) != arity or not all(map(_is_sort_key_part, key)):
        raise _invalid_cursor()
    return key


def _invalid_cursor() -> ValidationFailed:
    return ValidationFailed(
        "The cursor is not valid.",
        errors=[{"field": "cursor", "message": "not a cursor returned by this API"}],
    )


def encode_instant_cursor(at: datetime, row_id: str) -> str:
    """A cursor that resumes after the row sorted by (`at`, `row_id`)."""
    return encode_cursor((at - _EPOCH) // _MICROSECOND, row_id)


def decode_instant_cursor(cursor: str) -> tuple[datetime, str]:
    """The (instant, id) inside an `encode_instant_cursor` cursor; 422 naming `cursor` for
    anything else, including an instant no `datetime` can hold."""
    micros, row_id = decode_cursor(cursor, 2)
    if type(micros) is not int or micros not in _INSTANT_MICROS or not isinstance(row_id, str):
        raise _invalid_cursor()
    return _EPOCH + micros * _MICROSECOND, row_id


T = TypeVar("T")
Out = TypeVar("Out")


@dataclass(frozen=True, slots=True)
class Slice(Generic[T]):
    """What a service answers for a list: one page of domain objects (newest first) and the
    cursor to the next page, None at the end. Routers render it as a `Page` of their model."""

    items: list[T]
    next_cursor: str | None

    def render(self, out: Callable[[T], Out]) -> tuple[list[Out], str | None]:
        """The items as response models, with the cursor (for `Page[Model](data=…, …)`)."""
        return [out(item) for item in self.items], self.next_cursor


def before_id(cursor: str | None) -> str | None:
    """The id a page resumes before (lists keyed by their ULID ids)."""
    return str(decode_cursor(cursor, 1)[0]) if cursor else None


def slice_by_id(rows: Sequence[T], limit: int) -> Slice[T]:
    """A `Slice` from `limit + 1` rows (each with an `id`) fetched newest first: the extra row
    only says that another page follows."""
    page = list(rows[:limit])
    more = len(rows) > limit and bool(page)
    return Slice(page, encode_cursor(cast(Any, page[-1]).id) if more else None)


@dataclass(frozen=True, slots=True)
class PageRequest:
    """Which page of a list a caller asks for: the one after `cursor` (a page's `next_cursor`;
    None: the first), of at most `limit` items."""

    cursor: str | None = None
    limit: int = DEFAULT_LIMIT


Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[CleanStr | None, Query(max_length=200)]
DescribedCursor = Annotated[
    CleanStr | None, Query(max_length=200, description="`next_cursor` of a page.")
]


async def _page_query(cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT) -> PageRequest:
    return PageRequest(cursor, limit)


async def _described_page_query(
    cursor: DescribedCursor = None, limit: Limit = DEFAULT_LIMIT
) -> PageRequest:
    return PageRequest(cursor, limit)


# `async def`, as every dependency here: a plain `def` one runs in FastAPI's threadpool.
PageQuery = Annotated[PageRequest, Depends(_page_query)]
"""A list route's `cursor` and `limit` query parameters (after the route's own ones)."""
DescribedPageQuery = Annotated[PageRequest, Depends(_described_page_query)]
"""`PageQuery` whose `cursor` is described in the OpenAPI document."""
