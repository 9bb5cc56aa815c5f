"""What `configure_logging` lets through: the app's lines at the level configured, and the
Stripe SDK's per-request lines (two for every call, at INFO) only at DEBUG (issue 22: they cost
~2% of the webhook path's CPU and repeat what `StripeGateway._call` counts and logs)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from app.logs import configure_logging


def _sdk_request_line() -> None:
    """What the SDK's `log_info` does for each request: a logfmt line at INFO on its logger."""
    logging.getLogger("stripe").info("message='Request to Stripe api' method=get")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stripe_level = logging.getLogger("stripe").level
    yield
    root.handlers, root.level = handlers, level
    logging.getLogger("stripe").setLevel(stripe_level)
    structlog.reset_defaults()


def test_at_info_the_sdk_says_only_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json=True)
    _sdk_request_line()
    logging.getLogger("stripe").warning("stripe sdk warning")
    structlog.get_logger("app.test").info("app_line", order_id="ord_1")
    err = capsys.readouterr().err
    assert "Request to Stripe api" not in err
    assert "stripe sdk warning" in err
    assert "app_line" in err


def test_at_debug_the_sdk_says_each_request(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", json=True)
    _sdk_request_line()
    assert "Request to Stripe api" in capsys.readouterr().err
