"""The application's life: settings made current, SIGHUP reload, lifespan, SIGTERM drain.

``AppLifecycle`` is the part of ``VendApp`` (``app.asgi``) that keeps the application
going while ``app.asgi`` answers requests. It makes settings current (``_apply``:
settings → mounts, name cache, refresher, memory, access log, whitelist, media types),
keeping what a reload leaves unchanged (``_cache_shape``); it reloads them on SIGHUP
without dropping a request (``reload``); it probes mounts and reads the redirect map at
lifespan startup and closes everything at shutdown (``_lifespan``); and it puts a drain
period in front of the server's SIGTERM handling (``_drain_on_sigterm``). The metrics
hooks it wires into each mount and the refresher live here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
from collections.abc import Callable
from typing import Any, Final

from app.federation.cache import NameCache
from app.federation.health import probe_forever
from app.federation.memory import NameMemory
from app.federation.mount import Mount, State, build_mounts
from app.federation.redirects import RedirectMap, refresh_redirect_map
from app.federation.refresh import Refresher
from app.http.media_types import MediaTypes
from app.http.names import compile_pattern
from app.ops.accesslog import AccessLog
from app.ops.metrics import MULTIPROC_ENV, Metrics, observe_many
from app.settings import Settings
from app.types import Receive, Send

log = logging.getLogger("vend.app")

RETIRE_AFTER_S: Final = 300.0
"""After a reload, removed mounts keep their threads this long (seconds) for requests
that started before it."""


class AppLifecycle:
    """Mixin of ``VendApp``: the application's life (see the module docstring).

    ``VendApp.__init__`` makes the attributes below and then calls ``_apply``, which
    makes those that follow the settings (``settings``, ``cache``, ``refresher``,
    ``access_log``, the whitelist and the media types).
    """

    settings: Settings
    metrics: Metrics
    redirects: RedirectMap
    mounts: list[Mount]
    cache: NameCache
    refresher: Refresher | None
    memory: NameMemory
    access_log: AccessLog
    draining: bool
    reloads: int
    _reload_settings: Callable[[], Settings] | None
    _probe_task: asyncio.Task[None] | None
    _cache_shape: tuple[object, ...]
    _lookup_children: dict[tuple[str, str], tuple[Any, Any]]
    _health_written: dict[str, int]
    _pattern: re.Pattern[str]
    _media_types: MediaTypes

    def _apply(self, settings: Settings) -> tuple[list[Mount], list[Mount]]:
        """Make ``settings`` current.

        Mounts whose settings did not change keep their threads, health and real path.

        Raises:
            OSError: the access log cannot be opened; nothing has changed then.

        Returns:
            The mounts that are new (not yet probed) and those that were removed (the
            caller retires them once requests in flight are done with them).
        """
        access_log = AccessLog(settings.access_log)  # first: it may fail
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
        self.access_log = access_log
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
        self._lookup_children = {}  # keep_mounts may have removed some
        self._health_written = {}
        return fresh, list(kept.values())

    @property
    def name_pattern(self) -> re.Pattern[str]:
        """The compiled whitelist in force (the server's hot path validates with it)."""
        return self._pattern

    def _observe_lookup(self, mount: Mount, outcome: str, seconds: float, count: int) -> None:
        # Once per batch, mount and outcome on the cold path: the labelled children are
        # looked up once per (mount, outcome), not on every call.
        children = self._lookup_children.get((mount.name, outcome))
        if children is None:
            metrics = self.metrics
            children = self._lookup_children[(mount.name, outcome)] = (
                metrics.lookups.labels(mount.name, outcome),
                metrics.lookup_seconds.labels(mount.name) if outcome in ("hit", "miss") else None,
            )
        lookups, timing = children
        lookups.inc(count)
        if timing is not None:
            observe_many(timing, seconds, count)
        self._record_health(mount)

    def _count_revalidations(self, confirmed: int, left: int) -> None:
        if confirmed:
            self.metrics.revalidations.labels("confirmed").inc(confirmed)
        if left:
            self.metrics.revalidations.labels("left").inc(left)

    def _record_health(self, mount: Mount) -> None:
        """Put a mount's breaker state in ``vend_mount_up`` (after lookups or a probe);
        written only when it changed since this process last wrote it."""
        up = 0 if mount.state() is State.DOWN else 1
        if self._health_written.get(mount.name) != up:
            self.metrics.mount_up.labels(mount.name).set(up)
            self._health_written[mount.name] = up

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
        # What the reload replaces may be garbage in reference cycles (a closed cache and
        # its refresher): give the start-up objects back to the collector.
        gc.unfreeze()
        try:
            new_mounts, gone = self._apply(settings)
        except OSError as exc:  # the access log, gone since the settings were checked
            log.error("reload refused, keeping the current settings: %s", exc)
            return False
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
                # What start-up made (modules, settings, mounts) lives as long as the
                # process: out of the collector's sight, a full collection no longer scans
                # it, which under load paused the event loop ~17 ms (p99 x15 at 4 KiB).
                # Collect first: start-up's own garbage in cycles would be frozen forever.
                gc.collect()
                gc.freeze()
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
