"""Mounts: the ordered mount table and race-free resolution of a name under a mount.

A name is looked up under each mount in order; the first mount that holds it as a
regular file serves it. Containment is checked on the *open descriptor*, so there is no
window between a check and the use of what was checked:

1. ``open(2)`` the joined path with ``O_PATH`` (following symlinks, as a web server should
   for links that stay inside the mount): this resolves the name to an inode without
   opening the file, so FIFOs, sockets and devices are never opened;
2. ``fstat(2)`` that descriptor: only a regular file is served;
3. ``readlink(2)`` ``/proc/self/fd/N``, the real path of what was resolved, and require
   it to lie under the mount's real path (``os.path.commonpath``, never a string prefix,
   so ``/srv/content-old`` is not "under" ``/srv/content``);
4. reopen that same inode for reading through ``/proc/self/fd/N``.

A symlink that leaves its mount is therefore treated as absent, whatever it points to and
whenever it was swapped. Every one of these calls runs in the mount's own thread pool,
never on the event loop, with a timeout, so a hung NFS server stalls only the threads of
its own mount.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, TypeVar

from app.settings import MountSettings
from app.threads import DaemonPool, PoolFull, QueueTimeout, RunTimeout, call_in

log = logging.getLogger("vend.mounts")

# O_PATH: resolve the name (following symlinks) without opening the file itself, so a
# FIFO, socket or device is never opened; only a checked regular file is reopened.
_PATH_FLAGS: Final = os.O_PATH | os.O_CLOEXEC
_READ_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
# Errors that mean "this mount does not hold that name": go on to the next mount.
_ABSENT_ERRNOS: Final = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP})

T = TypeVar("T")


class Lookup(Enum):
    """Outcome of looking a name up under one mount, other than an open file."""

    ABSENT = "absent"  # not there, not a regular file, or its real path leaves the mount
    DIRECTORY = "directory"  # a directory inside the mount
    FORBIDDEN = "forbidden"  # EACCES/EPERM: there, but vend may not read it


class MountUnavailable(Exception):
    """A mount failed (timeout or I/O error); the message is an errno name, never a path."""


@dataclass(slots=True, eq=False)
class OpenFile:
    """A regular file opened inside a mount; the caller must ``close()`` it.

    Attributes:
        fd: the open descriptor (read-only).
        size: size in bytes, from fstat of the descriptor.
        mtime_ns: modification time in nanoseconds since the epoch, from the same fstat.
        name: the name that was opened, relative to the mount.
        mount: the mount that holds it.
    """

    fd: int
    size: int
    mtime_ns: int
    name: str
    mount: Mount
    closed: bool = False

    def fileno(self) -> int:
        """The descriptor, so the file can be handed to sendfile(2) (ASGI zero-copy send)."""
        return self.fd

    def close(self) -> None:
        """Close the descriptor; calling it again does nothing."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)


def is_within(real_path: str, root: str) -> bool:
    """Tell whether ``real_path`` lies strictly under the directory ``root``.

    Args:
        real_path: an absolute path with no symlinks (what the kernel reports).
        root: the mount's real path.

    Returns:
        True for a path below ``root`` (``root`` itself is not "within").
    """
    if real_path == root:
        return False
    try:
        return os.path.commonpath([real_path, root]) == root
    except ValueError:
        return False


@dataclass(frozen=True, slots=True, eq=False)
class SmallFile:
    """A regular file read whole inside a mount (its descriptor is already closed).

    Attributes:
        body: the file's bytes.
        mtime_ns: modification time in nanoseconds since the epoch.
        name: the name that was read, relative to the mount.
        mount: the mount that holds it.
    """

    body: bytes
    mtime_ns: int
    name: str
    mount: Mount

    @property
    def size(self) -> int:
        """Size in bytes."""
        return len(self.body)


def _read_small(fd: int, st: os.stat_result, max_bytes: int) -> bytes | None:
    """The whole file if it has at most ``max_bytes`` and did not change while read."""
    if st.st_size > max_bytes:
        return None
    chunks = []
    total = 0
    while total <= max_bytes:
        chunk = os.pread(fd, max_bytes + 1 - total, total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    after = os.fstat(fd)
    if total > max_bytes or (after.st_size, after.st_mtime_ns) != (total, st.st_mtime_ns):
        return None  # growing or being rewritten: serve it from the descriptor instead
    return b"".join(chunks)


def open_in_mount(
    root: str, name: str, mount: Mount, max_read_bytes: int = 0, root_dev: int | None = None
) -> OpenFile | SmallFile | Lookup:
    """Open ``name`` under the mount's real path, race-free. Blocking: run in a thread.

    Args:
        root: the mount's real path (no symlinks).
        name: a validated relative name (no empty, ``.`` or ``..`` segments).
        mount: the mount, recorded in the result.
        max_read_bytes: read files of at most this many bytes whole, in the same thread
            (0: never).
        root_dev: for ``require_mountpoint`` mounts, the device of the mounted
            filesystem: a file on any other device (the directory beneath an export
            that came unmounted since the last probe) is refused; None: no check.

    Returns:
        A ``SmallFile`` for a small regular file, an ``OpenFile`` for a larger one (the
        caller closes it), when its real path is inside ``root``; otherwise
        ``Lookup.ABSENT``, ``Lookup.DIRECTORY`` or ``Lookup.FORBIDDEN``.

    Raises:
        OSError: any other failure (EIO, ESTALE, ENOTCONN, ...): the mount is in trouble;
            ENODEV when ``root_dev`` does not match: the export is no longer mounted.
    """
    try:
        path_fd = os.open(f"{root}/{name}", _PATH_FLAGS)
    except OSError as exc:
        if exc.errno in _ABSENT_ERRNOS:
            return Lookup.ABSENT
        if exc.errno in (errno.EACCES, errno.EPERM):
            return Lookup.FORBIDDEN
        raise
    try:
        st = os.fstat(path_fd)
        if root_dev is not None and st.st_dev != root_dev:
            raise OSError(errno.ENODEV, "not on the mounted filesystem")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return Lookup.ABSENT  # FIFOs, sockets, devices: never opened, never served
        real = os.readlink(f"/proc/self/fd/{path_fd}")
        if real.endswith(" (deleted)"):
            real = real[: -len(" (deleted)")]
        if not is_within(real, root):
            return Lookup.ABSENT
        if stat.S_ISDIR(st.st_mode):
            return Lookup.DIRECTORY
        try:
            # Reopen *that* inode for reading: the O_PATH descriptor pins it, so no
            # rename or symlink swap since the checks above can change what is read.
            fd = os.open(f"/proc/self/fd/{path_fd}", _READ_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                return Lookup.FORBIDDEN
            raise
    finally:
        os.close(path_fd)
    try:
        st = os.fstat(fd)
        body = _read_small(fd, st, max_read_bytes) if max_read_bytes else None
    except BaseException:
        os.close(fd)
        raise
    if body is not None:
        os.close(fd)
        return SmallFile(body=body, mtime_ns=st.st_mtime_ns, name=name, mount=mount)
    return OpenFile(fd=fd, size=st.st_size, mtime_ns=st.st_mtime_ns, name=name, mount=mount)


def _close_if_file(result: object) -> None:
    """Close what a lookup that timed out opened, once it finally returns."""
    if isinstance(result, OpenFile):
        result.close()


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
    (``app.health``) marks it up again when its root answers.

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
                    discard=_close_if_file,
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
