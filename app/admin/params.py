"""What the operators' routes share: path parameters, the shape of a create route."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path, status
from fastapi.types import DecoratedCallable
from pydantic import BaseModel

from app.errors import BillingError
from app.openapi import problem_responses
from app.schemas import CleanToken

UserId = Annotated[CleanToken, Path(min_length=1, max_length=255)]
"""The user an operator acts on (the id in their JWT's `sub`)."""


def create_route(
    router: APIRouter,
    path: str,
    summary: str,
    model: type[BaseModel],
    existing: str,
    *errors: type[BillingError],
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """`POST path` that creates something once: 201 Created, or 200 with what exists already
    (`existing` says when: a replay of the same idempotency key and body, the same terms), or
    one of `errors`. The route sets the 200 on its `Response`."""
    return router.post(
        path,
        summary=summary,
        status_code=status.HTTP_201_CREATED,
        responses={200: {"model": model, "description": existing}, **problem_responses(*errors)},
    )
