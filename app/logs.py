"""JSON logs with structlog; every line carries the request id when there is one."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    """Route stdlib and structlog output through one JSON (or console) renderer on stderr."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        # Level first: a disabled level costs one `isEnabledFor`, not the whole chain.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic says every plugin it loads and every step at INFO; `migrate` prints one line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # The Stripe SDK says every request and response at INFO (two lines per call, a logfmt
    # string each, through the whole chain above: ~2% of the webhook path's CPU, issue 22);
    # `StripeGateway._call` counts and times each call in /metrics (by operation and outcome)
    # and logs it at DEBUG; a failure reaches its caller as our error. The SDK's own lines
    # show at DEBUG.
    logging.getLogger("stripe").setLevel(
        logging.DEBUG if root.getEffectiveLevel() <= logging.DEBUG else logging.WARNING
    )
