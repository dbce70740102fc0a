"""The mount runtime: a configured mount's real path, its own threads, and its breaker.

Every filesystem call on a mount runs in that mount's own bounded pool of daemon
threads (``app.federation.threads``) with a timeout, never on the event loop, so a hung
NFS server stalls only its own mount. What is opened, and how containment is checked,
is ``app.federation.open``'s.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from app.federation.open import Lookup, OpenFile, SmallFile, close_if_file, open_in_mount
from app.federation.threads import DaemonPool, PoolFull, QueueTimeout, RunTimeout, call_in
from app.settings import MountSettings

log = logging.getLogger("vend.mounts")

T = TypeVar("T")


class MountUnavailable(Exception):
    """A mount failed (timeout or I/O error); the message is an errno name, never a path."""


# Failures that say the mount itself is in trouble: they open its breaker.
_TRIPPING_ERRNOS: Final = frozenset(
    {errno.EIO, errno.ETIMEDOUT, errno.ENOTCONN, errno.ESTALE, errno.EHOSTDOWN, errno.ENODEV}
)

QUEUE_FACTOR: Final = 3
"""A call may wait this many times ``fs_op_s`` for a free thread of its mount."""

Observer = Callable[["Mount", str, float], None]
"""Called after each lookup with the mount, an outcome (``hit``, ``miss``, ``error``,
``timeout``, ``skipped``) and the seconds it took."""


@dataclass(eq=False)
class Mount:
    """A configured mount at run time: settings, real path, threads, and health.

    Health is a circuit breaker: a timeout or an I/O error that means the mount is in
    trouble (EIO, ETIMEDOUT, ENOTCONN, ESTALE after one retry...) marks the mount *down*,
    and lookups then skip it at once instead of waiting on it; the background probe
    (``app.federation.health``) marks it up again when its root answers.

    Attributes:
        settings: the validated mount settings.
        fs_op_s: timeout of one filesystem operation, in seconds.
        threads: size of its thread pool.
        executor: the mount's own pool (daemon threads, bounded queue).
        real_root: the mount's real path, known once a probe succeeded.
        up: False while the breaker is open.
        last_error: errno name of the last failure (``"ETIMEDOUT"``, ``"EIO"``...), or None.
        probe_latency_s: how long the last successful probe took, in seconds.
        observer: called after each lookup (metrics), or None.
    """

    settings: MountSettings
    fs_op_s: float
    threads: int
    executor: DaemonPool = field(init=False)
    probe_executor: DaemonPool = field(init=False)
    real_root: str | None = None
    root_dev: int | None = None
    up: bool = True
    last_error: str | None = None
    probe_latency_s: float | None = None
    observer: Observer | None = None

    def __post_init__(self) -> None:
        self.executor = DaemonPool(
            self.threads, max_queued=64 * self.threads, name=f"vend-{self.name}"
        )
        # Probes have their own thread, so a full request pool cannot starve them.
        self.probe_executor = DaemonPool(1, max_queued=1, name=f"vend-{self.name}-probe")

    @property
    def name(self) -> str:
        """The mount's name, as operators see it."""
        return self.settings.name

    def mark_down(self, error: str) -> None:
        """Open the breaker: lookups skip this mount until a probe succeeds."""
        if self.up:
            log.error("mount %s is down: %s", self.name, error)
        self.up = False
        self.last_error = error
        # Calls queued behind the stuck ones would each wait out their own timeout.
        self.executor.cancel_queued()

    def mark_up(self, latency_s: float) -> None:
        """Close the breaker after a successful probe that took ``latency_s`` seconds."""
        if not self.up:
            log.warning("mount %s is up again", self.name)
        self.up = True
        self.last_error = None
        self.probe_latency_s = latency_s

    async def _run(self, executor: DaemonPool, fn: Callable[..., T], *args: object) -> T:
        """One call in ``executor``; ESTALE is retried once.

        Only the time the call *runs* counts against ``fs_op_s``: waiting for a thread
        behind other requests is load, not a failing filesystem, and is allowed
        ``QUEUE_FACTOR`` times as long before the request gets 503 (``EAGAIN``) without
        marking the mount down.
        """
        for attempt in (1, 2):
            try:
                return await call_in(
                    executor,
                    fn,
                    *args,
                    run_timeout_s=self.fs_op_s,
                    queue_timeout_s=QUEUE_FACTOR * self.fs_op_s,
                    discard=close_if_file,
                )
            except (PoolFull, QueueTimeout):
                if not self.up:
                    raise MountUnavailable(self.last_error or "EIO") from None
                raise MountUnavailable("EAGAIN") from None
            except RunTimeout:
                self.mark_down("ETIMEDOUT")
                raise MountUnavailable("ETIMEDOUT") from None
            except OSError as exc:
                if exc.errno == errno.ESTALE and attempt == 1:
                    continue  # a stale NFS file handle: the path is looked up anew
                name = errno.errorcode.get(exc.errno or 0, "EIO")
                if exc.errno in _TRIPPING_ERRNOS or exc.errno is None:
                    self.mark_down(name)
                else:
                    self.last_error = name
                raise MountUnavailable(name) from None
        raise AssertionError("unreachable")

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking filesystem call in this mount's pool, with the timeout.

        Args:
            fn: the blocking function.
            *args: its arguments.

        Returns:
            What ``fn`` returned.

        Raises:
            MountUnavailable: the mount is down (breaker open), its queue is full
                (``EAGAIN``), the call took longer than ``fs_op_s`` seconds, or it failed
                with an OSError; the message is the errno name.
        """
        if not self.up:
            raise MountUnavailable(self.last_error or "EIO")
        return await self._run(self.executor, fn, *args)

    async def probe(self) -> bool:
        """Stat the mount's root in the probe thread, with the timeout; update health.

        Returns:
            True when the root is a readable directory (and a mount point where
            ``require_mountpoint`` is set): the mount is marked up. False otherwise: it
            is marked down with the errno name.
        """
        started = time.monotonic()
        try:
            self.real_root, self.root_dev = await self._run(
                self.probe_executor,
                _probe_root,
                str(self.settings.path),
                self.settings.require_mountpoint,
            )
        except MountUnavailable as exc:
            self.mark_down(str(exc))
            return False
        self.mark_up(time.monotonic() - started)
        return True

    async def lookup(self, name: str, max_read_bytes: int = 0) -> OpenFile | SmallFile | Lookup:
        """Look ``name`` up under this mount.

        Args:
            name: a validated relative name.
            max_read_bytes: read files up to this size whole (see ``open_in_mount``).

        Returns:
            See ``open_in_mount``.

        Raises:
            MountUnavailable: the mount is down, failed or timed out.
        """
        started = time.monotonic()
        if self.real_root is None and self.up and not await self.probe():
            self._observe("error", started)
            raise MountUnavailable(self.last_error or "EIO")
        if not self.up or self.real_root is None:
            self._observe("skipped", started)
            raise MountUnavailable(self.last_error or "EIO")
        try:
            found = await self.call(
                open_in_mount,
                self.real_root,
                name,
                self,
                max_read_bytes,
                self.root_dev if self.settings.require_mountpoint else None,
            )
        except MountUnavailable as exc:
            self._observe("timeout" if str(exc) == "ETIMEDOUT" else "error", started)
            raise
        self._observe("miss" if isinstance(found, Lookup) else "hit", started)
        return found

    def _observe(self, outcome: str, started: float) -> None:
        if self.observer is not None:
            self.observer(self, outcome, time.monotonic() - started)

    def close(self) -> None:
        """Stop accepting work; threads blocked in the kernel are abandoned, not joined."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.probe_executor.shutdown(wait=False, cancel_futures=True)


def _probe_root(path: str, require_mountpoint: bool) -> tuple[str, int]:
    """Real path and device of a mount root that is a readable directory (blocking)."""
    real = os.path.realpath(path, strict=True)
    st = os.stat(real)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory")
    if not os.access(real, os.R_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "not readable")
    if require_mountpoint and not os.path.ismount(real):
        raise OSError(errno.ENODEV, "not a mount point")
    return real, st.st_dev


def build_mounts(settings: Sequence[MountSettings], *, fs_op_s: float, threads: int) -> list[Mount]:
    """Create the run-time mounts, in priority order.

    Args:
        settings: the configured mounts, first has priority.
        fs_op_s: timeout of one filesystem operation, in seconds.
        threads: size of each mount's thread pool.

    Returns:
        One ``Mount`` per setting, not yet prepared.
    """
    return [Mount(settings=s, fs_op_s=fs_op_s, threads=threads) for s in settings]
