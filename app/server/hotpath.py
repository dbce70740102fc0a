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
import functools
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from app.asgi import OPERATOR_PREFIX, VendApp
from app.contract import close_verdict
from app.federation.cache import CachedFile, CachedMiss
from app.http.conditional import Outcome, evaluate_preconditions, imf_fixdate
from app.http.names import NameRefused, is_allowed_name, parse_request_path
from app.http.responses import ERROR_BODIES, error_fields
from app.server.trust import ClientFinder
from app.server.writer import CLOSE, KEEP_ALIVE, serialize_fields, status_line

if TYPE_CHECKING:
    from app.server.cold import ColdRequest

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
MAX_TARGETS: Final = 16_384
"""Most request-targets remembered, with their names (at most ``cache.max_entries``);
the memory is emptied when full. About 180 bytes each: at ``cache.max_entries`` (50,000
by default) it held 9 MiB, most of it targets of a long tail that are not asked again
before it empties, while the names a cache can keep hot are far fewer (8,192 small files
of 4 KiB at the default ``cache.max_bytes``)."""

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
            self._value = imf_fixdate(now).encode("ascii")
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
        self.head_tail = _head_tail_200(rep.headers_200)
        self.tail_304 = b"\r\n" + serialize_fields(rep.headers_304) + b"\r\n"
        self.date = b""
        self.get_answer = b""  # the whole 200 to a GET, for ``date``


_ANSWERED_ONCE: Final = object()
"""A cache entry's ``prebuilt`` after its first answer: its ``Prebuilt`` is kept from the
second on (``HotPath.answer``)."""

_PREFIX_200: Final = status_line(200) + b"date: "
_PREFIX_304: Final = status_line(304) + b"date: "
_PREFIX_404: Final = status_line(404) + b"date: "
_BODY_404: Final = ERROR_BODIES[404]
_FIELDS_404: Final = b"\r\n" + serialize_fields(error_fields(404))


def _head_tail_200(headers_200: Sequence[tuple[bytes, bytes]]) -> bytes:
    """What follows the Date value in a 200: the end of its line, the 200's fields and
    the blank line (RFC 9112 section 2.1)."""
    return b"\r\n" + serialize_fields(headers_200) + b"\r\n"


def _whole_200(date: bytes, head_tail: bytes, connection: bytes, body: bytes) -> bytes:
    """A 200's bytes from its Date value, ``_head_tail_200``, the Connection field to add
    (``CLOSE``, ``KEEP_ALIVE`` or b"", which goes before the blank line) and the body
    (b"" for HEAD)."""
    if connection:
        return b"".join((_PREFIX_200, date, head_tail[:-2], connection, b"\r\n", body))
    return b"".join((_PREFIX_200, date, head_tail, body))


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
        self.searching: dict[str, list[ColdRequest]] = {}
        """Names not fresh in the cache (never asked, or gone stale) being looked up
        below ASGI (``search``), each with the requests waiting for the verdict."""
        self.heads: dict[bytes, KnownHead] = {}
        """Request heads (exact bytes) the parser and vend's checks accepted, each a
        whole hot-path request: a client repeating one skips the parser."""
        self._heads_bytes = 0
        self._ready: list[Prebuilt] = []
        """The entries whose whole 200 answer is built for ``_ready_date``."""
        self._ready_bytes = 0
        self._ready_date = b""
        self._cache: object = None
        self._n200 = self._n304 = self._bytes = self._n404 = self._bytes404 = 0
        self._looked_up = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._shared = app.metrics.multiprocess
        app.metrics.before_render.append(self.flush)

    def lookup(self, target: bytes) -> CachedFile | None:
        """The fresh cached small file a request-target names, or None.

        Args:
            target: the request-target as received (origin-form).

        Returns:
            The entry, when the target passes the application's name checks and its
            small file is in the cache within ``cache.ttl_s``; else None.
        """
        found = self.find(target)
        return found if isinstance(found, CachedFile) else None

    def find(self, target: bytes) -> CachedFile | CachedMiss | str | None:
        """What the cache knows of the file a request-target names.

        Args:
            target: the request-target as received (origin-form).

        Returns:
            For a target that passes the application's name checks (``parse_request_path``
            and the whitelist in force) and names no directory index: its fresh small
            file (the hot path answers it), its fresh miss (404 here unless the redirect
            map lists the name), or the name itself when the cache holds neither (looked
            up below ASGI, ``app.server.cold``). None for anything else, a fresh large
            file included: the ASGI application answers it.
        """
        app = self.app
        cache = app.cache
        if cache is not self._cache:  # a reload made a new cache: forget every target
            self._cache = cache
            self._targets = {}
            self._target_bytes = 0
        name = self._targets.get(target)
        if name is None:
            name = self._checked_name(target)
            if name is None:
                return None
            self._target_bytes += len(target)
            if (
                len(self._targets) >= min(cache.max_entries, MAX_TARGETS)
                or self._target_bytes > MAX_TARGET_BYTES
            ):
                self._targets = {}
                self._target_bytes = len(target)
            self._targets[target] = name
        found = cache.get(name, time.monotonic())
        if found is None:
            return name
        if isinstance(found, CachedFile):
            if found.body is None:
                return None
        elif app.redirects.location(name) is not None:
            return None  # the application answers the redirect map's 301
        return found

    def _checked_name(self, target: bytes) -> str | None:
        """The name a request-target asks for, if it passes the application's checks."""
        path, _, query = target.partition(b"?")
        if b"#" in target or (not query and target.endswith(b"?")):
            return None  # logged differently by the application: not worth matching
        if path.startswith(OPERATOR_PREFIX):
            return None
        try:
            name = parse_request_path(path)
        except NameRefused:
            return None
        if name.wants_index or not is_allowed_name(name.name, self.app.name_pattern):
            return None
        return name.name

    def search(self, name: str, request: ColdRequest) -> None:
        """Look ``name`` up below ASGI for ``request``, with any others asking meanwhile.

        One lookup serves every request asking for a name while it runs: each lookup of
        a small file reads its own copy of the body, so 256 connections starting on a
        100 KiB file at once would otherwise hold 256 copies (and their answers).

        Args:
            name: what ``find`` returned for the request's target.
            request: the request; its ``looked_up`` is called with the verdict.
        """
        waiting = self.searching.get(name)
        if waiting is not None:
            waiting.append(request)
            return
        request.looks_up = True
        self.searching[name] = [request]
        self.app.look_up(name, functools.partial(self._searched, name))

    def _searched(self, name: str, verdict: object) -> None:
        """A lookup is done (its verdict cached): answer everyone who waited for it.

        The first request that needs the verdict itself (a large file, a redirect, 403,
        503) takes it; the others are answered from the cache or run through the
        application as usual. An open file nobody took is closed.
        """
        for request in self.searching.pop(name, ()):
            if request.looked_up(verdict):
                verdict = None
        close_verdict(verdict)

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
        pre = entry.prebuilt
        if not isinstance(pre, Prebuilt):
            # Kept on the entry from its second answer on: most names of the long tail
            # are asked once per ``cache.ttl_s``, and 50,000 entries' ready answers held
            # some 30 MiB that were never used again.
            if pre is None and if_none_match is None:  # a first 200: its fields alone
                entry.prebuilt = _ANSWERED_ONCE
                return self._first_answer(entry, head, connection)
            once = pre is _ANSWERED_ONCE
            pre = Prebuilt(entry)
            entry.prebuilt = pre if once else _ANSWERED_ONCE
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
        if connection or head:
            body = b"" if head else pre.body
            return _whole_200(date, pre.head_tail, connection, body), 200, len(body)
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

    def _first_answer(
        self, entry: CachedFile, head: bool, connection: bytes
    ) -> tuple[bytes, int, int]:
        """The 200 to an entry's first GET or HEAD, as ``answer`` builds it from a
        ``Prebuilt``, without making one: only the 200's fields are serialized (no 304
        tail), and the answer is not kept for the second (most entries of the long tail
        are answered once, and kept answers would take ``MAX_READY_BYTES`` from the names
        that are asked again).

        Returns:
            As ``answer``.
        """
        body = b"" if head else entry.body or b""
        head_tail = _head_tail_200(entry.rep.headers_200)
        return _whole_200(self.date(), head_tail, connection, body), 200, len(body)

    def reply(
        self,
        found: CachedFile | CachedMiss,
        known: KnownHead,
        keep_alive: bool,
        peer: tuple[str, int] | None,
        started: float | None = None,
        looked_up: bool = False,
    ) -> bytes:
        """The whole answer to a request ``find`` answered, counted and logged.

        Args:
            found: what ``find`` returned for the request's target: a small file, or a
                miss (404, RFC 9110 section 15.5.5, the application's short body).
            known: the request (method, target, HTTP/1.0, keep-alive, If-None-Match,
                fields).
            keep_alive: the connection stays open after the answer.
            peer: the connection's peer address.
            started: ``time.perf_counter()`` when the request was complete, for a
                request answered after a lookup; None for one answered at once.
            looked_up: the lookup was this request's own (see ``count``).

        Returns:
            The bytes to write.
        """
        method, url, http10, _, inm, headers = known
        connection = (KEEP_ALIVE if http10 else b"") if keep_alive else CLOSE
        head = method == b"HEAD"
        if isinstance(found, CachedFile):
            data, status, sent = self.answer(found, head, inm, connection)
            mount = found.mount.name
            self.count(mount, status, sent, peer, method, url, http10, headers, started, looked_up)
            return data
        app = self.app
        if not looked_up:
            app.metrics.cache_miss_remembered.inc()
        app.misses.count_miss(url.partition(b"?")[0], 404)
        body = b"" if head else _BODY_404
        self.count(None, 404, len(body), peer, method, url, http10, headers, started)
        return b"".join((_PREFIX_404, self.date(), _FIELDS_404, connection, b"\r\n", body))

    def count(
        self,
        mount: str | None,
        status: int,
        body_bytes: int,
        peer: tuple[str, int] | None,
        method: bytes,
        target: bytes,
        http10: bool,
        headers: list[tuple[bytes, bytes]],
        started: float | None = None,
        looked_up: bool = False,
    ) -> None:
        """Count an answer in the metrics (batched) and write its access log line.

        Args:
            mount: the name of the mount that served, or None (a 404).
            status: 200, 304 or 404.
            body_bytes: body bytes sent.
            peer: the connection's peer address.
            method: ``GET`` or ``HEAD``.
            target: the request-target as received.
            http10: the request was HTTP/1.0.
            headers: the request's fields (lower-case names).
            started: ``time.perf_counter()`` when a request answered after a lookup
                (``app.server.cold``) was complete, in seconds; None for one answered
                the moment it was complete.
            looked_up: its own lookup was counted as a cache miss when it started
                (``VendApp.look_up``): not a cache hit. Those that waited for another
                request's lookup are answered from the cache: hits.
        """
        if status == 200:
            self._n200 += 1
            self._bytes += body_bytes
        elif status == 304:
            self._n304 += 1
        else:
            self._n404 += 1
            self._bytes404 += body_bytes
        if looked_up and status != 404:
            self._looked_up += 1  # counted as a cache miss when its lookup started
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
            mount,
            started,
        )

    def flush(self) -> None:
        """Add the batched counts to the application's metrics."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        n200, n304, body_bytes = self._n200, self._n304, self._bytes
        n404, bytes404, looked_up = self._n404, self._bytes404, self._looked_up
        self._n200 = self._n304 = self._bytes = self._n404 = self._bytes404 = 0
        self._looked_up = 0
        metrics = self.app.metrics
        if n200 + n304 > looked_up:
            metrics.cache_hit.inc(n200 + n304 - looked_up)
        if n200:
            metrics.count_response(200, body_bytes, n200)
        if n304:
            metrics.count_response(304, 0, n304)
        if n404:
            metrics.count_response(404, bytes404, n404)


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
