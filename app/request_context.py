"""The current request's id, for logs and problem bodies."""

from __future__ import annotations

from contextvars import ContextVar

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served, if any."""
    return _request_id.get()


def set_request_id(value: str | None) -> object:
    """Bind a request id; returns a token for `reset_request_id`."""
    return _request_id.set(value)


def reset_request_id(token: object) -> None:
    """Restore the previous request id."""
    _request_id.reset(token)  # type: ignore[arg-type]
