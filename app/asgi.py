"""The ASGI application: ``create_app(settings)``.

How a request travels::

    raw_path ─names.parse_request_path─► name ─whitelist─► cache.NameCache ─hit─┐
        (400 on refusal)                                          │ miss or stale   │
                                                 federation.find_file               │
                                                   mounts, in order, each in        │
                                                   its own threads (403/404/503/301)│
    responses.send_representation ◄── small file's bytes or open file ◄─────────────┘
        │ conditional.py (304/412), ranges.py (206/416)
        └► body: from memory (cache), zero-copy send (app.server.writer: sendfile),
                 or reads in the mount's threads

A cache hit for a small file costs no thread hand-off and no filesystem call (see
``app.federation.cache`` for the staleness bound).

Paths under ``/.well-known/vend/`` go to the operator endpoints (``app.ops.operator``); the
whitelist refuses that prefix as content (a segment starting with a dot), so operator
paths and content names never collide. Every error is answered here, in one place, with
a short body that never names a filesystem path; anything unexpected is logged and
answered 500.

The application's life (settings made current, SIGHUP reload, lifespan startup and
shutdown, the SIGTERM drain) is ``app.lifecycle``'s ``AppLifecycle``, a mixin of
``VendApp``; this module answers requests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Final

from app.contract import FOUND_KEY, UNSENT_KEY, ZEROCOPY
from app.federation.bodies import FileBody
from app.federation.cache import CachedMiss, NameCache
from app.federation.lookup import Miss, Redirect, Search, Verdict
from app.federation.memory import NameMemory
from app.federation.mount import Mount
from app.federation.open import OpenFile, SmallFile, close_if_file
from app.federation.redirects import RedirectMap
from app.federation.refresh import Refresher
from app.http.names import NameRefused, request_candidates
from app.http.responses import (
    MemoryBody,
    Representation,
    Sent,
    make_representation,
    read_request_fields,
    send_error,
    send_redirect,
    send_representation,
)
from app.lifecycle import AppLifecycle
from app.ops.accesslog import AccessLog
from app.ops.metrics import MULTIPROC_ENV, Metrics
from app.ops.misses import SharedMisses
from app.ops.operator import create_operator_app
from app.settings import Settings
from app.types import Message, Receive, Scope, Send

log = logging.getLogger("vend.app")

OPERATOR_PREFIX: Final = b"/.well-known/vend/"
OPERATOR_PATHS: Final = frozenset(
    OPERATOR_PREFIX + endpoint for endpoint in (b"health", b"metrics", b"misses")
)
"""Matched exactly on the raw path: no decoding, no trailing slash, no redirect."""
_ALLOW: Final = [(b"allow", b"GET, HEAD")]


class VendApp(AppLifecycle):
    """vend as an ASGI 3 application.

    It answers requests; its life (``_apply``, ``reload``, ``prepare_mounts``,
    ``load_redirects``, the lifespan and the SIGTERM drain) is ``AppLifecycle``'s
    (``app.lifecycle``).

    Args:
        settings: validated settings.
        reload_settings: reads the settings anew from their sources (``vend serve``
            passes one); SIGHUP then reloads them. None: no reload.

    Attributes:
        mounts: the run-time mounts, in priority order.
        metrics: this application's Prometheus metrics.
        cache: the name cache of the hot path: kept across a reload that leaves the
            mounts and the settings shaping its entries as they were (``_cache_shape``),
            else started anew.
        refresher: revalidates the cache's hot small files before they go stale
            (``app.federation.refresh``); made anew with the cache.
        memory: where names live (``app.federation.memory``): kept across reloads, and
            shared by every worker of ``vend serve --workers N``.
        draining: True after SIGTERM while ``timeouts.drain_s`` runs: health is 503 and
            every response closes its connection.
        reloads: settings reloads that took effect in this process (SIGHUP).
    """

    def __init__(
        self, settings: Settings, reload_settings: Callable[[], Settings] | None = None
    ) -> None:
        self.metrics = Metrics()
        self.misses = SharedMisses(os.environ.get(MULTIPROC_ENV) or None, self.metrics)
        self.redirects = RedirectMap()
        self.mounts: list[Mount] = []
        self._reload_settings = reload_settings
        self.draining = False
        self.reloads = 0
        self.access_log = AccessLog("off")
        self._probe_task: asyncio.Task[None] | None = None
        self._operator = create_operator_app(self)
        self._cache_shape: tuple[object, ...] = ()  # none yet: _apply makes the cache
        self.refresher: Refresher | None = None  # made with the cache, by _apply
        self.memory = NameMemory(
            max_names=settings.cache.remember_names,
            ttl_s=settings.cache.remember_s,
            directory=os.environ.get(MULTIPROC_ENV) or None,  # shared by all workers
        )
        self._apply(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: HTTP requests and the lifespan protocol."""
        if scope["type"] == "http":
            await self._handle_http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        raw_path = raw_path.partition(b"?")[0]
        if raw_path.startswith(OPERATOR_PREFIX):
            if raw_path in OPERATOR_PATHS:
                status, body_bytes = await self._call_operator(scope, receive, send)
            else:  # anything else under the prefix, encoded or not: no such endpoint
                sent = await send_error(send, 404, head=scope["method"] == "HEAD")
                status, body_bytes = sent.status, sent.body_bytes
            self.access_log.record(scope, status, body_bytes, None, started)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if not response_started:
                self._close_if_draining(message)
            response_started = True
            await send(message)

        mount_name: str | None = None
        found = scope.pop(FOUND_KEY, None)  # the server's cold path looked the name up
        try:
            sent, mount_name = await self._serve_content(scope, raw_path, tracking_send, found)
        except Exception:
            if response_started:
                raise  # the server aborts the connection: never a short body
            log.exception("unexpected error while serving a request")
            sent = await send_error(send, 500, head=scope["method"] == "HEAD")
        finally:
            close_if_file(found)  # answered without it (a reload refused the name, ...)
        body_bytes = sent.body_bytes - scope.get(UNSENT_KEY, 0)
        self.metrics.count_response(sent.status, body_bytes)
        self.access_log.record(scope, sent.status, body_bytes, mount_name, started)

    async def _serve_content(
        self, scope: Scope, raw_path: bytes, send: Send, found: Verdict | None
    ) -> tuple[Sent, str | None]:
        """Answer a content request; returns what was sent and the serving mount's name.

        ``found`` is the verdict of a lookup already made for this request's name (the
        server's cold path, ``look_up``), or None to look it up here.
        """
        method: str = scope["method"]
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return await send_error(send, 405, headers=_ALLOW), None
        index_names = self.settings.index_names
        try:
            request_name, candidates = request_candidates(raw_path, self._pattern, index_names)
        except NameRefused as refusal:
            log.debug("refused name: %s", refusal)
            self.misses.count_refusal(refusal.rule)
            return await send_error(send, 400, head=head), None
        if not candidates:
            return await self._send_miss(send, raw_path, 404, head=head), None

        name = candidates[0]
        cacheable = not request_name.wants_index
        if found is None:
            cache = self.cache  # one consistent table, even across a reload
            if cacheable:
                cached = cache.get(name, time.monotonic())
                if isinstance(cached, CachedMiss):
                    self.metrics.cache_miss_remembered.inc()
                    return await self._answer_not_found(scope, raw_path, name, send), None
                if cached is not None and cached.body is not None:
                    self.metrics.cache_hit.inc()
                    fields = read_request_fields(method, scope["headers"])
                    body = MemoryBody(cached.body)
                    sent = await send_representation(send, fields, cached.rep, body)
                    return sent, cached.mount.name
            found = await self._search(candidates, cacheable, bool(index_names)).wait()
        return await self._answer_found(scope, raw_path, name, found, send, cacheable=cacheable)

    def look_up(self, name: str, on_verdict: Callable[[Verdict | None], object]) -> None:
        """Look up a name for the server's cold path; the verdict is cached when it arrives.

        The server (``app.server.dispatch``) calls this for a GET or HEAD that its hot
        path could answer but for the cache: the name passed the same checks as here
        (``parse_request_path``, the whitelist) and names no directory index. When the
        future is done the cache holds what a request through ``_serve_content`` would
        have put there; the server then answers from the cache, or runs the request
        through the application with the verdict under ``FOUND_KEY`` in its scope.

        Args:
            name: a validated name (no index, no trailing ``/``).
            on_verdict: called on the loop with the verdict once it is cached (in the
                call that decided it; see ``Search.listen``): a ``SmallFile``, an
                ``OpenFile`` (whoever takes the verdict closes it), a ``Redirect`` or a
                ``Miss``, never an exception; None if the lookup was cancelled.
        """
        self._search([name], True, bool(self.settings.index_names)).listen(on_verdict)

    def _search(self, candidates: list[str], cacheable: bool, redirect: bool) -> Search:
        """Start the search over the mounts; its verdict is cached when it arrives.

        Args:
            candidates: the names to try (see ``request_candidates``).
            cacheable: the request names a file, not a directory index: the verdict goes
                into the name cache.
            redirect: answer a directory with a ``Redirect``.

        Returns:
            The search (``app.federation.lookup``); ``future`` gets the verdict.
        """
        if cacheable:
            self.metrics.cache_miss.inc()
        cache, mounts = self.cache, self.mounts  # one consistent table, even across a reload
        checked_at = time.monotonic()
        name = candidates[0]
        key = self.memory.where(name)
        search = Search(
            mounts,
            candidates,
            redirect_directories=redirect,
            max_read_bytes=cache.max_file_bytes,
            remembered=None if key is None else next((m for m in mounts if m.key == key), None),
            hold_remembered=self.settings.down_mount_policy == "unavailable",
        )

        # First: the cache holds the verdict for the listeners after it.
        search.listen(functools.partial(self._remember, name, cache, checked_at, cacheable))
        return search

    def _remember(
        self, name: str, cache: NameCache, checked_at: float, cacheable: bool, found: Verdict | None
    ) -> None:
        """Put a lookup's verdict in the name memory and, when ``cacheable``, the cache
        (nothing for None: the search was cancelled)."""
        if found is None:
            return
        if isinstance(found, Miss):
            if found is Miss.NOT_FOUND:
                self.memory.forget(name)
                if cacheable:
                    cache.put_miss(name, checked_at)
            return
        if isinstance(found, Redirect):
            return
        self.memory.remember(name, found.mount.key, checked_at)
        if cacheable:
            small = found.body if isinstance(found, SmallFile) else None
            cache.put_file(name, found.mount, self._representation(found), small, checked_at)

    def _representation(self, found: OpenFile | SmallFile) -> Representation:
        """The representation of a file found (RFC 9110 section 3.2): its fields."""
        return make_representation(
            found.size,
            found.mtime_ns,
            self._media_types.for_name(found.name),
            self.settings.cache_control,
        )

    async def _answer_found(
        self,
        scope: Scope,
        raw_path: bytes,
        name: str,
        found: Verdict,
        send: Send,
        *,
        cacheable: bool,
    ) -> tuple[Sent, str | None]:
        """Answer from a lookup's verdict; returns what was sent and the serving mount's name."""
        method: str = scope["method"]
        head = method == "HEAD"
        if isinstance(found, Miss):
            if found is not Miss.NOT_FOUND or not cacheable:
                return await self._send_miss(send, raw_path, found.value, head=head), None
            return await self._answer_not_found(scope, raw_path, name, send), None
        if isinstance(found, Redirect):
            location = raw_path + b"/"
            if scope.get("query_string"):
                location += b"?" + scope["query_string"]
            return await send_redirect(send, location, head=head), found.mount.name
        rep = self._representation(found)
        fields = read_request_fields(method, scope["headers"])
        if isinstance(found, SmallFile):
            return await send_representation(
                send, fields, rep, MemoryBody(found.body)
            ), found.mount.name
        try:
            zerocopy = ZEROCOPY in scope.get("extensions", {}) and found.mount.settings.sendfile
            body = FileBody(found, zerocopy=zerocopy and method == "GET")
            return await send_representation(send, fields, rep, body), found.mount.name
        finally:
            found.close()

    async def _call_operator(self, scope: Scope, receive: Receive, send: Send) -> tuple[int, int]:
        status, body_bytes = 500, 0

        async def capture(message: Message) -> None:
            nonlocal status, body_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
                self._close_if_draining(message)
            elif message["type"] == "http.response.body" and scope["method"] != "HEAD":
                body_bytes += len(message.get("body", b""))
            await send(message)

        await self._operator(scope, receive, capture)
        return status, body_bytes

    async def _send_miss(self, send: Send, raw_path: bytes, status: int, *, head: bool) -> Sent:
        """Answer 404, 403 or 503 for content, counting it among the misses."""
        self.misses.count_miss(raw_path, status)
        return await send_error(send, status, head=head)

    async def _answer_not_found(self, scope: Scope, raw_path: bytes, name: str, send: Send) -> Sent:
        """No mount holds ``name``: 301 where the redirect map lists it, else 404."""
        head = scope["method"] == "HEAD"
        location = self.redirects.location(name, scope.get("query_string") or b"")
        if location is not None:
            return await send_redirect(send, location, head=head)
        return await self._send_miss(send, raw_path, 404, head=head)

    def _close_if_draining(self, start: Message) -> None:
        """While draining, make a response start close its connection after the response."""
        if self.draining:
            start["headers"] = [*start.get("headers", ()), (b"connection", b"close")]


def create_app(
    settings: Settings, reload_settings: Callable[[], Settings] | None = None
) -> VendApp:
    """Build the ASGI application.

    Args:
        settings: validated settings (see ``app.settings_load.load_settings``).
        reload_settings: reads settings anew for SIGHUP, or None.

    Returns:
        The application; mounts are probed when the server sends lifespan startup.

    Raises:
        OSError: the access log file cannot be opened.
    """
    return VendApp(settings, reload_settings)
