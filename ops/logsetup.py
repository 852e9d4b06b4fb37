"""structlog configuration: JSON lines for services, readable lines in a terminal.

Secrets never reach a log line: every event passes `schemas.redact.redact_secrets`.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from schemas.log_repeats import limit_library_repeats
from schemas.redact import redact_secrets


def configure(json_lines: bool | None = None, level: str = "INFO") -> None:
    """Call once per process. `json_lines=None` picks JSON unless stderr is a terminal."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # first: the traceback text is redacted too
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (aiokafka, faust) log through stdlib logging; keep them quiet and on stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    limit_library_repeats()
