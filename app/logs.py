"""vend's log format, for its own lines and uvicorn's: one stream, one format.

Every line is ``TIMESTAMP vend[PID] LEVEL: message``, or, in a worker of
``vend serve --workers N``, ``TIMESTAMP vend[PID] worker K LEVEL: message``; the timestamp
is UTC, ISO 8601 with milliseconds (``2026-01-31T12:00:00.123Z``). ``log_config`` is the
``logging.config.dictConfig`` dictionary handed to uvicorn as its ``log_config`` (uvicorn
applies it in every process it configures), so uvicorn's own lines ("Started server
process", "Application startup complete") take the same format. The access log is not
written through ``logging`` (``app.ops.accesslog``).

Errors that stop a command before it runs (invalid settings, an address that cannot be
bound) are not log lines: the CLI prints them as one ``vend: ...`` line.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Final

WORKER_ENV: Final = "VEND_WORKER"
"""Set by the supervisor in each worker's environment: the worker's number, from 1."""
LINE_FORMAT: Final = (
    "%(asctime)s.%(msecs)03dZ vend[%(process)d]%(worker)s %(levelname)s: %(message)s"
)
"""The format of every log line (``logging`` style; ``worker`` is added by the formatter)."""
DATE_FORMAT: Final = "%Y-%m-%dT%H:%M:%S"


class LineFormatter(logging.Formatter):
    """``LINE_FORMAT`` with UTC timestamps and the worker number from ``WORKER_ENV``."""

    def __init__(self) -> None:
        super().__init__(LINE_FORMAT, DATE_FORMAT)
        self.converter = time.gmtime
        worker = os.environ.get(WORKER_ENV, "")
        self._worker = f" worker {worker}" if worker else ""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of ``LINE_FORMAT``.

        Args:
            record: the log record.

        Returns:
            The formatted line (with the traceback, if the record carries one).
        """
        record.worker = self._worker
        return super().format(record)


def log_config(level: str) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` dictionary for vend's and uvicorn's loggers.

    Args:
        level: the ``log_level`` setting: ``debug``, ``info``, ``warning`` or ``error``.

    Returns:
        A configuration writing the ``vend`` and ``uvicorn`` loggers' records at
        ``level`` and above to stderr in ``LINE_FORMAT``. ``vend`` records still
        propagate to the root logger (which has no handler unless something adds one).
    """
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": LineFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "vend": {"handlers": ["stderr"], "level": upper},
            "uvicorn": {"handlers": ["stderr"], "level": upper, "propagate": False},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }
