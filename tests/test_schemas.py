"""Every string a route accepts is declared with the shared clean-string types, so a new route or
field cannot let a control character through to the database or Stripe."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, BeforeValidator

from app.config import Settings
from app.main import create_app
from app.schemas import (
    CleanStr,
    CleanText,
    check_amount_grammar,
    refuse_control_characters,
    refuse_control_characters_but_line_breaks,
    refuse_unclean_json,
)
from app.usage.router import OPERATIONS

CLEANERS = {
    refuse_control_characters,
    refuse_control_characters_but_line_breaks,
    check_amount_grammar,  # ASCII digits and a dot only
}

NOT_YET_CLEAN = {
    # Verified by HMAC against the raw body, never stored.
    ("receive_stripe_event", "stripe_signature"),
    # An event that is not a valid `UsageIn` (say, with a NUL) is answered `invalid`, not stored.
    ("record_usage_batch", "body.events"),
    ("record_usage_batch", "body.events (Any)"),
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
