"""Access log: Apache's combined format, plus the mount that served and the duration.

One line per request::

    127.0.0.1 - - [29/Nov/2026:15:40:01 +0000] "GET /a.css HTTP/1.1" 200 512 "-" "curl/8" s1 184

The two fields after Apache's combined format are the mount's name (``-`` when no mount
served) and the time taken in microseconds (Apache's ``%D``). The client address is the
one uvicorn reports, which is the X-Forwarded-For address only when the connection comes
from a ``trusted_proxies`` address. Unprintable bytes, ``"`` and ``\\`` are escaped as
Apache does (``\\xhh``), so a hostile request cannot forge log lines.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import re
import sys
import time
from typing import Final

from app.types import Scope

_UNSAFE: Final = re.compile(rb'[^\x20-\x7e]|["\\]')
LOGGER_NAME: Final = "vend.access"


def _escape(raw: bytes) -> str:
    """Escape a byte string for a log field as Apache does."""
    return _UNSAFE.sub(lambda m: b"\\x%02x" % m.group()[0], raw).decode("ascii")


class AccessLog:
    """Writes access log lines to stdout or a file, or nowhere.

    Lines are queued on the event loop (``QueueHandler``) and written by a background
    thread (``QueueListener``), so no write or stat of the log file ever runs on the
    event loop.

    Args:
        target: ``"off"``, ``"stdout"`` or an absolute file path (reopened when
            logrotate moves it: ``WatchedFileHandler``).

    Raises:
        OSError: the file cannot be opened for appending.
    """

    def __init__(self, target: str) -> None:
        self.enabled = target != "off"
        self._logger = logging.getLogger(LOGGER_NAME)
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        for handler in list(self._logger.handlers):
            self._logger.removeHandler(handler)
            handler.close()
        self._listener: logging.handlers.QueueListener | None = None
        if not self.enabled:
            return
        sink: logging.Handler
        if target == "stdout":
            sink = logging.StreamHandler(sys.stdout)
        else:
            sink = logging.handlers.WatchedFileHandler(target, encoding="ascii")
        sink.setFormatter(logging.Formatter("%(message)s"))
        lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._logger.addHandler(logging.handlers.QueueHandler(lines))
        self._listener = logging.handlers.QueueListener(lines, sink)
        self._listener.start()
        atexit.register(self.close)

    def close(self) -> None:
        """Write out what is queued and stop the writer thread; idempotent."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
            for handler in listener.handlers:
                handler.close()

    def record(
        self, scope: Scope, status: int, body_bytes: int, mount: str | None, started: float
    ) -> None:
        """Write one line for a finished request.

        Args:
            scope: the request's ASGI scope.
            status: the status code sent.
            body_bytes: body bytes sent (``-`` is logged for 0, as Apache's ``%b``).
            mount: the name of the mount that served, or None.
            started: ``time.perf_counter()`` when the request began, in seconds.
        """
        if not self.enabled:
            return
        client = scope.get("client")
        target = scope.get("raw_path") or scope.get("path", "").encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        method = scope.get("method", "-").encode("ascii", "replace")
        version = scope.get("http_version", "1.1").encode("ascii", "replace")
        referer = user_agent = None
        for key, value in scope.get("headers", ()):
            if key == b"referer" and referer is None:
                referer = value
            elif key == b"user-agent" and user_agent is None:
                user_agent = value
        self.record_line(
            str(client[0]) if client else None,
            method + b" " + target + b" HTTP/" + version,
            status,
            body_bytes,
            referer,
            user_agent,
            mount,
            started,
        )

    def record_line(
        self,
        client: str | None,
        request_line: bytes | None,
        status: int,
        body_bytes: int,
        referer: bytes | None,
        user_agent: bytes | None,
        mount: str | None,
        started: float,
    ) -> None:
        """Write one line from its fields: what the server's hot path and refusals log.

        Args:
            client: the client address (after trusted X-Forwarded-For), or None.
            request_line: method, target and version as received, or None when no
                whole request line arrived (logged ``-``).
            status: the status code sent.
            body_bytes: body bytes sent.
            referer: the Referer field, or None.
            user_agent: the User-Agent field, or None.
            mount: the name of the mount that served, or None.
            started: ``time.perf_counter()`` when the request began, in seconds.
        """
        if not self.enabled:
            return
        micros = int((time.perf_counter() - started) * 1_000_000)
        # The address may come from X-Forwarded-For: escaped like any other field.
        host = _escape(client.encode("utf-8", "surrogateescape")) if client else "-"
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime())
        self._logger.info(
            '%s - - [%s] "%s" %d %s "%s" "%s" %s %d',
            host,
            stamp,
            "-" if request_line is None else _escape(request_line),
            status,
            body_bytes or "-",
            "-" if referer is None else _escape(referer),
            "-" if user_agent is None else _escape(user_agent),
            mount or "-",
            micros,
        )
