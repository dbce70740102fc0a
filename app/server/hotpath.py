"""The hot path: a cached small file answered by the protocol, below ASGI.

For a name whose small file is fresh in the name cache (``app.federation.cache``, within
``cache.ttl_s``), a GET or HEAD without a body, without Range and without any
precondition but If-None-Match is answered from bytes built once per cache entry: no
ASGI scope, no task, no thread, one write. Everything else goes through the ASGI
application, which answers the same request with the same bytes but for Date (the
property test in ``tests/unit/test_hotpath.py`` holds the two paths to that).

What makes the two paths give the same answer:

- names: a request-target is looked up here only after it passed exactly the
  application's checks (``parse_request_path``, then the whitelist in force); only then
  is the raw target remembered, so later requests for it skip them until the entry
  goes stale or the settings are reloaded;
- headers: both come from the entry's ``Representation`` through
  ``app.server.writer.serialize_head``, Date first (formatted once a second);
- preconditions: If-None-Match goes through ``evaluate_preconditions``, as in
  ``app.http.responses``;
- the access log: the same line through ``AccessLog.record_line``, the client address
  found by uvicorn's own ``ProxyHeadersMiddleware`` with the configured trusted
  addresses;
- metrics: counted here in batches and added to the application's counters before
  every scrape (``Metrics.before_render``) and at least once a second; with several
  worker processes (any of which may answer a scrape) each answer is counted at once.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from email.utils import formatdate
from typing import Any, Final

from app.asgi import OPERATOR_PREFIX, VendApp
from app.federation.cache import CachedFile
from app.http.conditional import Outcome, evaluate_preconditions
from app.http.names import NameRefused, is_allowed_name, parse_request_path
from app.server.trust import ClientFinder
from app.server.writer import CLOSE, KEEP_ALIVE, serialize_fields, status_line

FLUSH_S: Final = 1.0
"""Longest the hot path's counts wait before they reach the metrics, in seconds."""
MAX_KNOWN_HEAD_BYTES: Final = 2048
"""Longest request head remembered whole (``HotPath.remember``), in bytes."""
MAX_KNOWN_HEADS: Final = 4096
"""Most request heads remembered; the memory is emptied when full."""
MAX_KNOWN_HEADS_BYTES: Final = 8 * 1024 * 1024
"""Most memory the remembered heads may take, in bytes, as ``KNOWN_FIELD_BYTES`` a field
plus each head's bytes; the memory is emptied when full. (Without it 4,096 heads of 100
short fields held 57 MB.)"""
KNOWN_FIELD_BYTES: Final = 160
"""What one remembered field costs (its tuple and two byte strings), in bytes."""
MAX_TARGET_BYTES: Final = 4 * 1024 * 1024
"""Most bytes of request-targets remembered (``HotPath.lookup``; a target may be 8,190
bytes, its query any string); the memory is emptied when full."""

MAX_READY_BYTES: Final = 2 * 1024 * 1024
"""Most bytes of whole 200 answers kept built for the current second
(``Prebuilt.get_answer``), in bytes: enough for the busiest names (480 answers of 4 KiB,
eight of 256 KiB), whose answers leave in one write of bytes built once a second; past
it an answer is joined for its request alone. (Unbounded, 2,000 names of 4 KiB asked
within a second held 8.6 MiB on top of the cache's own copies of their bodies.)"""

KnownHead = tuple[bytes, bytes, bool, bool, bytes | None, list[tuple[bytes, bytes]]]
"""What a remembered head asks: method, target, HTTP/1.0, keep-alive, If-None-Match,
fields."""


class DateField:
    """The Date field's value (RFC 9110 section 6.6.1), formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        """The current date as an IMF-fixdate, in bytes."""
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


class Prebuilt:
    """The ready answers for one cache entry: 200 to GET and HEAD, and 304.

    Each is ``status line + "date: "`` followed by the Date value and a tail (the
    fields, the blank line and any body), so that an answer is one join of a few parts.
    The whole 200 to a GET is kept for the current second only, and only while all such
    answers of that second take at most ``MAX_READY_BYTES`` (``HotPath.answer``): a
    small file's bytes are held once by the cache (``cache.max_bytes`` bounds them) and
    at most once more in those answers.

    Args:
        entry: a cached small file (its body is not None).
    """

    __slots__ = ("body", "date", "etag_validators", "get_answer", "head_tail", "tail_304")

    def __init__(self, entry: CachedFile) -> None:
        rep = entry.rep
        self.etag_validators = rep.validators
        self.body = entry.body or b""
        # The fields and the blank line; an answer with a Connection field puts it
        # before the blank line (rare: HTTP/1.0 or ``Connection: close``).
        self.head_tail = b"\r\n" + serialize_fields(rep.headers_200) + b"\r\n"
        self.tail_304 = b"\r\n" + serialize_fields(rep.headers_304) + b"\r\n"
        self.date = b""
        self.get_answer = b""  # the whole 200 to a GET, for ``date``


_PREFIX_200: Final = status_line(200) + b"date: "
_PREFIX_304: Final = status_line(304) + b"date: "


class HotPath:
    """The hot path of one application (one per process and ``VendApp``).

    Args:
        app: the application whose cache, whitelist, log and metrics are used.
        trusted_client: ``(peer, headers) -> client address`` as the ASGI path's proxy
            middleware finds it, or None when X-Forwarded-For is not trusted.
    """

    def __init__(
        self,
        app: VendApp,
        trusted_client: Callable[[tuple[str, int] | None, list[tuple[bytes, bytes]]], Any] | None,
    ) -> None:
        self.app = app
        self.date = DateField()
        self.trusted_client = trusted_client
        self._targets: dict[bytes, str] = {}
        self._target_bytes = 0
        """Targets answered here, each with its name: never the cache entry itself, so
        that an entry the name cache lets go of (``cache.max_bytes``) is not kept alive."""
        self.refreshing: dict[bytes, asyncio.Future[None]] = {}
        """Targets not fresh in the cache (never asked, or gone stale) being looked up,
        by one request each: the others asking meanwhile wait for it instead of all
        looking it up (and reading the same small file) at once."""
        self.heads: dict[bytes, KnownHead] = {}
        """Request heads (exact bytes) the parser and vend's checks accepted, each a
        whole hot-path request: a client repeating one skips the parser."""
        self._heads_bytes = 0
        self._ready: list[Prebuilt] = []
        """The entries whose whole 200 answer is built for ``_ready_date``."""
        self._ready_bytes = 0
        self._ready_date = b""
        self._cache: object = None
        self._n200 = self._n304 = self._bytes = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._shared = app.metrics.multiprocess
        app.metrics.before_render.append(self.flush)

    def lookup(self, target: bytes) -> CachedFile | None:
        """The fresh cached small file a request-target names, or None.

        Args:
            target: the request-target as received (origin-form).

        Returns:
            The entry, when the target passes the application's name checks and its
            small file is in the cache within ``cache.ttl_s``; else None (the request
            goes to the ASGI application).
        """
        app = self.app
        cache = app.cache
        if cache is not self._cache:  # a reload made a new cache: forget every target
            self._cache = cache
            self._targets = {}
            self._target_bytes = 0
        now = time.monotonic()
        known = self._targets.get(target)
        if known is not None:
            found = cache.get(known, now)
            if isinstance(found, CachedFile) and found.body is not None:
                if found.prebuilt is None:
                    found.prebuilt = Prebuilt(found)
                return found
            if found is not None:  # fresh, but no longer a small file: not hot any more
                self._targets.pop(target, None)
            return None
        path, _, query = target.partition(b"?")
        if b"#" in target or (not query and target.endswith(b"?")):
            return None  # logged differently by the application: not worth matching
        if path.startswith(OPERATOR_PREFIX):
            return None
        try:
            name = parse_request_path(path)
        except NameRefused:
            return None
        if name.wants_index or not is_allowed_name(name.name, app.name_pattern):
            return None
        found = cache.get(name.name, now)
        if not isinstance(found, CachedFile) or found.body is None:
            if found is not None:  # fresh, but no longer a small file: not hot any more
                self._targets.pop(target, None)
            return None
        if found.prebuilt is None:
            found.prebuilt = Prebuilt(found)
        self._target_bytes += len(target)
        if len(self._targets) >= cache.max_entries or self._target_bytes > MAX_TARGET_BYTES:
            self._targets = {}
            self._target_bytes = len(target)
        self._targets[target] = name.name
        return found

    def refresh_done(self, target: bytes) -> None:
        """The request refreshing ``target`` is done: wake those waiting for it."""
        waiting = self.refreshing.pop(target, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def remember(self, head: bytes, known: KnownHead) -> None:
        """Remember a request head that was parsed, checked and answered here.

        Only a read holding exactly one head and nothing else, answered by the hot path,
        comes here (``VendProtocol``); at most ``MAX_KNOWN_HEADS`` heads of at most
        ``MAX_KNOWN_HEAD_BYTES`` bytes are kept, in ``MAX_KNOWN_HEADS_BYTES``.

        Args:
            head: the head's exact bytes.
            known: what it asks.
        """
        if len(head) <= MAX_KNOWN_HEAD_BYTES:
            weight = len(head) + KNOWN_FIELD_BYTES * len(known[5])
            self._heads_bytes += weight
            if len(self.heads) >= MAX_KNOWN_HEADS or self._heads_bytes > MAX_KNOWN_HEADS_BYTES:
                self.heads = {}
                self._heads_bytes = weight
            self.heads[head] = known

    def answer(
        self,
        entry: CachedFile,
        head: bool,
        if_none_match: bytes | None,
        connection: bytes,
    ) -> tuple[bytes, int, int]:
        """The whole answer to a GET or HEAD of a hot entry.

        Args:
            entry: what ``lookup`` found.
            head: the method is HEAD.
            if_none_match: the If-None-Match field (repeated ones joined by ``", "``),
                or None.
            connection: the Connection field to add (``CLOSE``, ``KEEP_ALIVE`` or b"").

        Returns:
            ``(bytes to write, status, body bytes)``.
        """
        pre: Prebuilt = entry.prebuilt  # type: ignore[assignment]
        date = self.date()
        if if_none_match is not None:
            outcome = evaluate_preconditions(
                "HEAD" if head else "GET",
                pre.etag_validators,
                if_match=None,
                if_none_match=if_none_match.decode("latin-1"),
                if_modified_since=None,
                if_unmodified_since=None,
            )
            if outcome is Outcome.NOT_MODIFIED:
                if connection:
                    parts = [_PREFIX_304, date, pre.tail_304[:-2], connection, b"\r\n"]
                    return b"".join(parts), 304, 0
                return b"".join((_PREFIX_304, date, pre.tail_304)), 304, 0
        if connection:
            body = b"" if head else pre.body
            parts = [_PREFIX_200, date, pre.head_tail[:-2], connection, b"\r\n", body]
            return b"".join(parts), 200, len(body)
        if head:
            return b"".join((_PREFIX_200, date, pre.head_tail)), 200, 0
        if pre.date is not date:  # a new second: build the answer once for it, if room
            if date is not self._ready_date:  # let go of the last second's answers
                for old in self._ready:
                    old.get_answer = old.date = b""
                self._ready = []
                self._ready_bytes = 0
                self._ready_date = date
            answer = b"".join((_PREFIX_200, date, pre.head_tail, pre.body))
            if self._ready_bytes + len(answer) > MAX_READY_BYTES:
                return answer, 200, len(pre.body)  # for this request alone
            self._ready_bytes += len(answer)
            self._ready.append(pre)
            pre.get_answer = answer
            pre.date = date
        return pre.get_answer, 200, len(pre.body)

    def count(
        self,
        entry: CachedFile,
        status: int,
        body_bytes: int,
        peer: tuple[str, int] | None,
        method: bytes,
        target: bytes,
        http10: bool,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Count an answer in the metrics (batched) and write its access log line.

        Args:
            entry: the cache entry answered from (its mount is logged).
            status: 200 or 304.
            body_bytes: body bytes sent.
            peer: the connection's peer address.
            method: ``GET`` or ``HEAD``.
            target: the request-target as received.
            http10: the request was HTTP/1.0.
            headers: the request's fields (lower-case names).
        """
        if status == 200:
            self._n200 += 1
            self._bytes += body_bytes
        else:
            self._n304 += 1
        if self._flush_timer is None:
            if self._shared:  # another worker may answer the next scrape: no batching
                self.flush()
            else:
                self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
        log = self.app.access_log
        if not log.enabled:
            return
        referer = user_agent = None
        for key, value in headers:
            if key == b"referer" and referer is None:
                referer = value
            elif key == b"user-agent" and user_agent is None:
                user_agent = value
        client = peer
        if self.trusted_client is not None:
            client = self.trusted_client(peer, headers)
        log.record_line(
            str(client[0]) if client else None,
            method + b" " + target + (b" HTTP/1.0" if http10 else b" HTTP/1.1"),
            status,
            body_bytes,
            referer,
            user_agent,
            entry.mount.name,
            None,  # answered the moment the request was complete
        )

    def flush(self) -> None:
        """Add the batched counts to the application's metrics."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        n200, n304, body_bytes = self._n200, self._n304, self._bytes
        self._n200 = self._n304 = self._bytes = 0
        metrics = self.app.metrics
        if n200 or n304:
            metrics.cache_hit.inc(n200 + n304)
        if n200:
            metrics.count_response(200, body_bytes, n200)
        if n304:
            metrics.count_response(304, 0, n304)


_BY_APP: weakref.WeakKeyDictionary[VendApp, HotPath] = weakref.WeakKeyDictionary()


def hot_path_for(app: VendApp, trusted_client: Callable[[], ClientFinder | None]) -> HotPath:
    """The process's hot path for ``app``, made on first use.

    Args:
        app: the application.
        trusted_client: makes the client address finder (see ``HotPath``), called once.

    Returns:
        The one ``HotPath`` of this application.
    """
    hot = _BY_APP.get(app)
    if hot is None:
        hot = _BY_APP[app] = HotPath(app, trusted_client())
    return hot


__all__ = ["CLOSE", "KEEP_ALIVE", "DateField", "HotPath", "KnownHead", "Prebuilt", "hot_path_for"]
