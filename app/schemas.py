"""Shapes shared by every capability."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class StrictModel(BaseModel):
    """A request body: unknown fields are rejected (422 naming the field)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Page(BaseModel, Generic[T]):
    """A page of a list: `next_cursor` is null on the last page."""

    data: list[T]
    next_cursor: str | None
