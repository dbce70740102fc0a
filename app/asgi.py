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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from typing import Final

from app.contract import UNSENT_KEY, ZEROCOPY
from app.federation.bodies import FileBody
from app.federation.cache import CachedMiss, NameCache
from app.federation.health import probe_forever
from app.federation.lookup import Miss, Redirect, find_file
from app.federation.memory import NameMemory
from app.federation.mount import Mount, State, build_mounts
from app.federation.open import SmallFile
from app.federation.redirects import RedirectMap, refresh_redirect_map
from app.federation.refresh import Refresher
from app.http.media_types import MediaTypes
from app.http.names import NameRefused, compile_pattern, request_candidates
from app.http.responses import (
    MemoryBody,
    Sent,
    make_representation,
    read_request_fields,
    send_error,
    send_redirect,
    send_representation,
)
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
RETIRE_AFTER_S: Final = 300.0
"""After a reload, removed mounts keep their threads this long (seconds) for requests
that started before it."""
_ALLOW: Final = [(b"allow", b"GET, HEAD")]


class VendApp:
    """vend as an ASGI 3 application.

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

    def _apply(self, settings: Settings) -> tuple[list[Mount], list[Mount]]:
        """Make ``settings`` current.

        Mounts whose settings did not change keep their threads, health and real path.

        Returns:
            The mounts that are new (not yet probed) and those that were removed (the
            caller retires them once requests in flight are done with them).
        """
        kept = {m.settings: m for m in self.mounts if m.fs_op_s == settings.timeouts.fs_op_s}
        mounts = []
        fresh = []
        for mount_settings in settings.mounts:
            mount = kept.pop(mount_settings, None)
            if mount is None:
                (mount,) = build_mounts(
                    [mount_settings],
                    fs_op_s=settings.timeouts.fs_op_s,
                    threads=settings.threads_per_mount,
                )
                mount.observer = self._observe_lookup
                fresh.append(mount)
            mounts.append(mount)
        self.settings = settings
        self.access_log.close()
        self.access_log = AccessLog(settings.access_log)
        self._pattern = compile_pattern(settings.name_pattern)
        self._media_types = MediaTypes(settings.mime_types)
        c = settings.cache
        shape = _cache_shape(settings)
        same_mounts = len(mounts) == len(self.mounts) and all(
            new is old for new, old in zip(mounts, self.mounts, strict=True)
        )
        if shape != self._cache_shape or not same_mounts:
            self.cache = NameCache(
                ttl_s=c.ttl_s,
                miss_ttl_s=c.miss_ttl_s,
                max_entries=c.max_entries,
                max_bytes=c.max_bytes,
                max_file_bytes=c.max_file_bytes,
            )
            self._cache_shape = shape
            if self.refresher is not None:
                self.refresher.close()
            self.refresher = Refresher(
                self.cache,
                mounts,
                self.memory,
                directories_absent=not settings.index_names,
                counted=self._count_revalidations,
            )
        self.mounts = mounts
        self.memory.configure((c.remember_names, c.remember_s), (m.key for m in mounts))
        self.metrics.keep_mounts([m.name for m in mounts], [m.name for m in kept.values()])
        return fresh, list(kept.values())

    @property
    def name_pattern(self) -> re.Pattern[str]:
        """The compiled whitelist in force (the server's hot path validates with it)."""
        return self._pattern

    def _observe_lookup(self, mount: Mount, outcome: str, seconds: float) -> None:
        self.metrics.lookups.labels(mount.name, outcome).inc()
        if outcome in ("hit", "miss"):
            self.metrics.lookup_seconds.labels(mount.name).observe(seconds)
        self._record_health(mount)

    def _count_revalidations(self, confirmed: int, left: int) -> None:
        if confirmed:
            self.metrics.revalidations.labels("confirmed").inc(confirmed)
        if left:
            self.metrics.revalidations.labels("left").inc(left)

    def _record_health(self, mount: Mount) -> None:
        """Put a mount's breaker state in ``vend_mount_up`` (after a lookup or a probe)."""
        self.metrics.mount_up.labels(mount.name).set(0 if mount.state() is State.DOWN else 1)

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
        try:
            sent, mount_name = await self._serve_content(scope, raw_path, tracking_send)
        except Exception:
            if response_started:
                raise  # the server aborts the connection: never a short body
            log.exception("unexpected error while serving a request")
            sent = await send_error(send, 500, head=scope["method"] == "HEAD")
        body_bytes = sent.body_bytes - scope.get(UNSENT_KEY, 0)
        self.metrics.count_response(sent.status, body_bytes)
        self.access_log.record(scope, sent.status, body_bytes, mount_name, started)

    async def _serve_content(
        self, scope: Scope, raw_path: bytes, send: Send
    ) -> tuple[Sent, str | None]:
        """Answer a content request; returns what was sent and the serving mount's name."""
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
        cache, mounts = self.cache, self.mounts  # one consistent table, even across a reload
        if cacheable:
            cached = cache.get(name, time.monotonic())
            if isinstance(cached, CachedMiss):
                self.metrics.cache_miss_remembered.inc()
                return await self._answer_not_found(scope, raw_path, name, send), None
            if cached is not None and cached.body is not None:
                self.metrics.cache_hit.inc()
                fields = read_request_fields(method, scope["headers"])
                sent = await send_representation(send, fields, cached.rep, MemoryBody(cached.body))
                return sent, cached.mount.name
            self.metrics.cache_miss.inc()
        checked_at = time.monotonic()
        key = self.memory.where(name)
        found = await find_file(
            mounts,
            candidates,
            redirect_directories=bool(index_names) and not request_name.wants_index,
            max_read_bytes=cache.max_file_bytes,
            remembered=next((m for m in mounts if m.key == key), None),
            hold_remembered=self.settings.down_mount_policy == "unavailable",
        )
        if isinstance(found, Miss):
            if found is not Miss.NOT_FOUND:
                return await self._send_miss(send, raw_path, found.value, head=head), None
            self.memory.forget(name)
            if not cacheable:
                return await self._send_miss(send, raw_path, 404, head=head), None
            cache.put_miss(name, checked_at)
            return await self._answer_not_found(scope, raw_path, name, send), None
        if isinstance(found, Redirect):
            location = raw_path + b"/"
            if scope.get("query_string"):
                location += b"?" + scope["query_string"]
            return await send_redirect(send, location, head=head), found.mount.name
        rep = make_representation(
            found.size,
            found.mtime_ns,
            self._media_types.for_name(found.name),
            self.settings.cache_control,
        )
        self.memory.remember(name, found.mount.key, checked_at)
        if cacheable:
            small = found.body if isinstance(found, SmallFile) else None
            cache.put_file(name, found.mount, rep, small, checked_at)
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

    async def load_redirects(self) -> bool:
        """Read the redirect map anew and check it on the current mounts.

        With ``--workers N`` a checked map is also saved beside the metrics, and a worker
        (re)started with a bad map file takes that last checked map instead.

        Returns:
            True when the new map is in force; False when it was refused (logged, one
            line naming the entry) and the current map stays.
        """
        self.redirects, error = await refresh_redirect_map(
            self.redirects,
            self.settings.redirect_map,
            self._pattern,
            self.mounts,
            os.environ.get(MULTIPROC_ENV) or None,
        )
        if error is not None:
            log.error("redirect map refused, keeping the current one: %s", error)
        return error is None

    def _close_if_draining(self, start: Message) -> None:
        """While draining, make a response start close its connection after the response."""
        if self.draining:
            start["headers"] = [*start.get("headers", ()), (b"connection", b"close")]

    def _drain_on_sigterm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put a drain period in front of the server's own SIGTERM handling.

        On SIGTERM, for ``timeouts.drain_s`` seconds vend keeps listening and serving,
        answers health with 503 (so a balancer takes it out of rotation) and closes each
        connection after its response (so no pooled connection is closed under a request
        just sent on it); then the server's handler runs: in-flight requests finish
        within ``graceful_shutdown_s`` and the process exits.
        """
        drain_s = self.settings.timeouts.drain_s
        previous = signal.getsignal(signal.SIGTERM)
        if drain_s <= 0 or not callable(previous):
            return

        def on_sigterm(signum: int, frame: object) -> None:
            if self.draining:
                previous(signum, None)  # a second SIGTERM: stop now
                return
            self.draining = True
            log.warning("SIGTERM: draining for %s s before shutting down", drain_s)
            loop.call_soon_threadsafe(loop.call_later, drain_s, previous, signum, None)

        signal.signal(signal.SIGTERM, on_sigterm)

    async def prepare_mounts(self, mounts: list[Mount] | None = None) -> None:
        """Probe mounts at once (each in its own probe thread, with its timeout).

        Args:
            mounts: the mounts to probe; None: all current mounts.
        """
        mounts = self.mounts if mounts is None else mounts
        await asyncio.gather(*(mount.probe() for mount in mounts))
        for mount in mounts:
            self._record_health(mount)
            if not mount.up:
                log.error("mount %s is not usable: %s", mount.name, mount.last_error)

    async def reload(self) -> bool:
        """Read the settings anew (SIGHUP) and switch to them without dropping a request.

        New mounts are probed before the switch; requests already running finish on
        the table they started with. Invalid settings are refused with a logged error
        and the current ones stay.

        Returns:
            True when the new settings are in force.
        """
        if self._reload_settings is None:
            log.warning("SIGHUP ignored: no settings source to reload from")
            return False
        try:
            settings = await asyncio.to_thread(self._reload_settings)
        except Exception as exc:
            log.error("reload refused, keeping the current settings: %s", exc)
            return False
        for field in ("host", "port", "workers", "unix_socket"):
            if getattr(settings, field) != getattr(self.settings, field):
                log.warning("reload: %s changes only on restart", field)
        new_mounts, gone = self._apply(settings)
        await self.prepare_mounts(new_mounts)
        await self.load_redirects()
        for mount in gone:
            # Requests that started on the old table may still use it for a while.
            asyncio.get_running_loop().call_later(RETIRE_AFTER_S, mount.close)
        self.reloads += 1
        log.warning("reloaded settings: mounts %s", ", ".join(m.name for m in self.mounts))
        return True

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.prepare_mounts()
                await self.load_redirects()
                self._drain_on_sigterm(loop)
                interval = self.settings.timeouts.probe_interval_s
                self._probe_task = loop.create_task(
                    probe_forever(lambda: self.mounts, interval, self._record_health)
                )
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._probe_task is not None:
                    self._probe_task.cancel()
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(signal.SIGHUP)
                if self.refresher is not None:
                    self.refresher.close()
                for mount in self.mounts:
                    mount.close()
                self.access_log.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _cache_shape(settings: Settings) -> tuple[object, ...]:
    """The settings that shape the name cache's entries (and the hot path's answers).

    A reload keeps the cache when these and the mount table (the same mounts, unchanged,
    in the same order) are as they were; otherwise it starts empty.
    """
    c = settings.cache
    return (
        (c.ttl_s, c.miss_ttl_s, c.max_entries, c.max_bytes, c.max_file_bytes),
        settings.name_pattern,
        settings.cache_control,
        tuple(sorted(settings.mime_types.items())),
        tuple(settings.index_names),
    )


def create_app(
    settings: Settings, reload_settings: Callable[[], Settings] | None = None
) -> VendApp:
    """Build the ASGI application.

    Args:
        settings: validated settings (see ``app.settings.load_settings``).
        reload_settings: reads settings anew for SIGHUP, or None.

    Returns:
        The application; mounts are probed when the server sends lifespan startup.

    Raises:
        OSError: the access log file cannot be opened.
    """
    return VendApp(settings, reload_settings)
