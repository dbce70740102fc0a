"""Access log: Apache's combined format, plus the mount that served and the duration.

One line per request::

    127.0.0.1 - - [29/Nov/2026:15:40:01 +0000] "GET /a.css HTTP/1.1" 200 512 "-" "curl/8" s1 184

The two fields after Apache's combined format are the mount's name (``-`` when no mount
served) and the time taken in microseconds (Apache's ``%D``). The client address is the
one uvicorn reports, which is the X-Forwarded-For address only when the connection comes
from a ``trusted_proxies`` address. Unprintable bytes, ``"`` and ``\\`` are escaped as
Apache does (``\\xhh``), and spaces in the address too (X-Forwarded-For may hold any
text), so a hostile request cannot forge log lines or fields.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import queue
import re
import sys
import threading
import time
from typing import Final

from app.types import Scope

_UNSAFE: Final = re.compile(rb'[^\x20-\x7e]|["\\]')
MAX_BATCH_LINES: Final = 4096
"""Most lines handed to the writer thread at once."""
HAND_OVER_S: Final = 0.1
"""Longest a line waits on the event loop before it goes to the writer thread, in
seconds."""


MAX_LINE_PARTS: Final = 1024
"""Most lines' fixed parts kept (``AccessLog.record_line``), each of a client, request
line, Referer and User-Agent of 512 bytes at most together: the same requests come again and
again, so a line is mostly one lookup and one join."""

_LineKey = tuple[str | None, bytes | None, int, int, bytes | None, bytes | None, str | None]
"""What a line says but its time stamp and duration: client, request line, status, body
bytes, Referer, User-Agent, mount."""

_ESCAPED: dict[bytes, str] = {}
"""Fields escaped lately (the same request lines and User-Agents come again and again)."""
MAX_ESCAPED: Final = 4096


def _escape(raw: bytes) -> str:
    """Escape a byte string for a log field as Apache does."""
    escaped = _ESCAPED.get(raw)
    if escaped is None:
        escaped = _UNSAFE.sub(lambda m: b"\\x%02x" % m.group()[0], raw).decode("ascii")
        if len(_ESCAPED) >= MAX_ESCAPED:
            _ESCAPED.clear()
        if len(raw) <= 1024:
            _ESCAPED[raw] = escaped
    return escaped


class _WatchedFile:
    """A file opened for appending, reopened when logrotate moves or removes it (as
    ``logging.handlers.WatchedFileHandler`` does, without the logging machinery, whose
    set-up elsewhere may close every handler).

    Args:
        path: the file.

    Raises:
        OSError: it cannot be opened.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._open()

    def _open(self) -> None:
        self.stream = open(self.path, "a", encoding="ascii")  # noqa: SIM115 - kept open
        stat = os.fstat(self.stream.fileno())
        self._id = (stat.st_dev, stat.st_ino)

    def write(self, text: str) -> None:
        """Append ``text`` and flush, to the file now at ``path``."""
        try:
            stat = os.stat(self.path)
            moved = (stat.st_dev, stat.st_ino) != self._id
        except FileNotFoundError:
            moved = True
        if moved:
            self.stream.close()
            self._open()
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        """Close the file."""
        self.stream.close()


class AccessLog:
    """Writes access log lines to stdout or a file, or nowhere.

    Lines are formatted on the event loop and collected there for at most
    ``HAND_OVER_S`` seconds (or ``MAX_BATCH_LINES`` lines), then handed as one batch to
    a background thread that writes the batch in one write. No write or stat of the log
    file ever runs on the event loop, and a busy server wakes the writer thread and
    makes a system call once per batch, not once per line.

    Args:
        target: ``"off"``, ``"stdout"`` or an absolute file path (reopened when
            logrotate moves it).

    Raises:
        OSError: the file cannot be opened for appending.
    """

    def __init__(self, target: str) -> None:
        self.enabled = target != "off"
        self._lines: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._pending: list[str] = []
        self._hand_over: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._second = -1
        self._stamp = ""
        self._parts: dict[_LineKey, tuple[str, str]] = {}
        if not self.enabled:
            return
        self._file: _WatchedFile | None = None
        if target != "stdout":
            self._file = _WatchedFile(target)
        self._thread = threading.Thread(
            target=self._write_lines, name="vend-access-log", daemon=True
        )
        self._thread.start()
        atexit.register(self.close)

    def close(self) -> None:
        """Write out what is queued and stop the writer thread; idempotent."""
        if self._thread is None:
            return
        self._hand_over_lines()
        thread, self._thread = self._thread, None
        self._lines.put(None)
        thread.join()

    def _add(self, line: str) -> None:
        """Collect a line; hand the batch over when full or ``HAND_OVER_S`` after its first."""
        pending = self._pending
        pending.append(line)
        if len(pending) >= MAX_BATCH_LINES:
            self._hand_over_lines()
        elif self._hand_over is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on an event loop: no one would hand it over later
                self._hand_over_lines()
                return
            self._hand_over = loop.call_later(HAND_OVER_S, self._hand_over_lines)

    def _hand_over_lines(self) -> None:
        """Give the collected lines to the writer thread."""
        if self._hand_over is not None:
            with contextlib.suppress(RuntimeError):  # at exit the loop may be closed
                self._hand_over.cancel()
            self._hand_over = None
        if self._pending and self._thread is not None:
            self._lines.put(self._pending)
            self._pending = []

    def _write_lines(self) -> None:
        """The writer thread: write each batch of lines in one write, until ``None``."""
        lines = self._lines
        while True:
            batch = lines.get()
            if batch is None:
                if self._file is not None:
                    self._file.close()
                return
            text = "".join([line + "\n" for line in batch])
            try:
                if self._file is None:
                    sys.stdout.write(text)
                    sys.stdout.flush()
                else:
                    self._file.write(text)
            except (OSError, ValueError) as exc:
                print(f"vend: access log not written: {exc}", file=sys.stderr)

    def _timestamp(self) -> str:
        """The local time as Apache's ``%t`` shows it, formatted once a second."""
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(now))
        return self._stamp

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
        started: float | None,
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
            started: ``time.perf_counter()`` when the request began, in seconds, or
                None for a request answered the moment it was complete (0 µs).
        """
        if not self.enabled:
            return
        micros = 0 if started is None else int((time.perf_counter() - started) * 1_000_000)
        key: _LineKey = (client, request_line, status, body_bytes, referer, user_agent, mount)
        parts = self._parts.get(key)
        if parts is None:
            parts = self._line_parts(key)
            if len(self._parts) >= MAX_LINE_PARTS:
                self._parts.clear()
            # The client counts too: a trusted X-Forwarded-For may name 8 KiB of anything.
            size = len(client or "") + len(request_line or b"")
            if size + len(referer or b"") + len(user_agent or b"") <= 512:
                self._parts[key] = parts
        self._add(f"{parts[0]}{self._timestamp()}{parts[1]}{micros}")

    @staticmethod
    def _line_parts(key: _LineKey) -> tuple[str, str]:
        """A line's text before its time stamp and between the time stamp and duration."""
        client, request_line, status, body_bytes, referer, user_agent, mount = key
        # The address may come from X-Forwarded-For: escaped like any other field, and
        # its spaces too, so that it stays one field (a forged date or user cannot follow).
        host = (
            _escape(client.encode("utf-8", "surrogateescape")).replace(" ", "\\x20")
            if client
            else "-"
        )
        line = "-" if request_line is None else _escape(request_line)
        ref = "-" if referer is None else _escape(referer)
        agent = "-" if user_agent is None else _escape(user_agent)
        return (
            f"{host} - - [",
            f'] "{line}" {status} {body_bytes or "-"} "{ref}" "{agent}" {mount or "-"} ',
        )
