"""Declarative base with a constraint naming convention, and shared column types."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import BigInteger, DateTime, Index, MetaData, String, TypeDecorator, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

BigIntPK = BigInteger()
"""The type of the tables' serial (BIGINT) primary keys."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp (`timestamptz`); a naive datetime is refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


# The columns most tables have, as `Mapped[...]` types.
IdKey = Annotated[str, mapped_column(String(40), primary_key=True)]
"""The primary key of rows with ids of ours (`new_id(prefix)`: `ord_01J…`)."""
UserId = Annotated[str, mapped_column(String(255))]
"""A user's id: the JWT `sub` of the identity provider."""
CreatedAt = Annotated[datetime, mapped_column(default=utcnow)]
UpdatedAt = Annotated[datetime, mapped_column(default=utcnow, onupdate=utcnow)]


def one_of(column: str, values: Iterable[str]) -> str:
    """A CHECK expression allowing exactly `values` (generated from an enum or a tuple of the
    code's, so the database and the code cannot disagree)."""
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


def partial_index(name: str, *columns: str, where: str, unique: bool = False) -> Index:
    """An index of only the rows `where` holds."""
    return Index(name, *columns, unique=unique, postgresql_where=text(where))


class Base(DeclarativeBase):
    """Base of every table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), int: BigInteger()}
