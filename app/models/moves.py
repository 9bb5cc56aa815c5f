"""The allowed moves of a status column, as one table that both the Python side (`allows`) and
the SQL side (`sql_move`: the `SET` and the guard of an UPDATE) read, so a state module states
each diagram once. Used by the state modules of auto top-up, holds and notification channels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from app.models.base import one_of

S = TypeVar("S", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class Moves(Generic[S]):
    """`allowed[current]` is the statuses `current` may move to (a final status maps to none)."""

    allowed: Mapping[S, frozenset[S]]

    def __post_init__(self) -> None:
        statuses = set(self.allowed)
        if any(not targets <= statuses for targets in self.allowed.values()):
            raise ValueError("a move leads to a status the table does not list")

    def allows(self, current: str, new: S) -> bool:
        """Whether `current` may move to `new`."""
        return new in self.allowed[type(new)(current)]

    def sources(self, *targets: S) -> list[S]:
        """The statuses a move into any of `targets` may start from, in the enum's order."""
        return [s for s, into in self.allowed.items() if any(t in into for t in targets)]

    def sql_guard(self, column: str, *targets: S) -> str:
        """`column IN (…)`: the rows an UPDATE into `targets` may touch."""
        return one_of(column, self.sources(*targets))

    def sql_move(self, column: str, new: S) -> tuple[str, str]:
        """`(set, guard)` of an UPDATE that moves rows into `new`: `column = 'new'` for its SET
        list and `column IN (…)` (the statuses allowed to move there) for its WHERE."""
        return f"{column} = '{new}'", self.sql_guard(column, new)

    def sql_move_to_param(self, column: str, param: str, targets: Iterable[S]) -> tuple[str, str]:
        """`(set, guard)` for a move into the status a bound parameter names (`$7::text`): the
        guard also requires the parameter to be one of `targets`."""
        wanted = list(targets)
        return f"{column} = {param}", (
            f"{self.sql_guard(column, *wanted)} AND {one_of(param, wanted)}"
        )
