"""The race-free open: resolving a name under one mount, checked on the open descriptor.

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
import os
import stat
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from enum import Enum
from typing import Final, Protocol

from app.federation.mountinfo import mount_id_of, mount_points
from app.settings import MountSettings

# O_PATH: resolve the name (following symlinks) without opening the file itself, so a
# FIFO, socket or device is never opened; only a checked regular file is reopened.
_PATH_FLAGS: Final = os.O_PATH | os.O_CLOEXEC
_READ_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
# Errors that mean "this mount does not hold that name": go on to the next mount.
_ABSENT_ERRNOS: Final = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP})


class MountUnavailable(Exception):
    """A mount failed (timeout or I/O error); the message is an errno name, never a path."""


class Holder(Protocol):
    """The mount a file was found on, as what serves the file needs it
    (``app.federation.mount.Mount`` is one).

    Attributes:
        name: the mount's name, as operators see it (metrics, access log).
        key: what identifies the mount across reloads (the name cache's records).
        executor: the mount's own thread pool, where the file's reads run.
        fs_op_s: timeout of one filesystem operation on it, in seconds.
        settings: its settings (``sendfile``: whether its files may go by sendfile(2)).
    """

    @property
    def name(self) -> str: ...

    @property
    def key(self) -> str: ...

    @property
    def executor(self) -> Executor: ...

    @property
    def fs_op_s(self) -> float: ...

    @property
    def settings(self) -> MountSettings: ...


class Lookup(Enum):
    """Outcome of looking a name up under one mount, other than an open file."""

    ABSENT = "absent"  # not there, not a regular file, or its real path leaves the mount
    DIRECTORY = "directory"  # a directory inside the mount
    FORBIDDEN = "forbidden"  # EACCES/EPERM: there, but vend may not read it


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
    mount: Holder
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
    # Both are normalized absolute paths, so "below" is a prefix ending in a separator.
    return real_path.startswith(root if root.endswith("/") else root + "/") and real_path != root


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
    mount: Holder

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
    # Read what fstat promised and one byte more (which shows a file that grew), not
    # max_bytes + 1: each read allocates what it asks for, and in the mount's threads a
    # 256 KiB buffer cut down to a 4 KiB body leaves the rest scattered in their heaps.
    expected = min(st.st_size, max_bytes) + 1
    while total <= max_bytes:
        want = expected - total if total < expected else max_bytes + 1 - total
        chunk = os.pread(fd, want, total)
        chunks.append(chunk)
        total += len(chunk)
        if len(chunk) < want:
            break  # the end of the file (any other short read fails the check below)
    after = os.fstat(fd)
    if total > max_bytes or (after.st_size, after.st_mtime_ns) != (total, st.st_mtime_ns):
        return None  # growing or being rewritten: serve it from the descriptor instead
    return b"".join(chunks)


def _on_mount(fd: int, root: str, root_mount_id: int) -> bool:
    """True when ``fd`` lies on the root's own mount; False on a mount nested below it.

    Raises:
        OSError: ENODEV when it lies on neither (the export is no longer mounted).
    """
    found = mount_id_of(fd)
    if found is None or found == root_mount_id:
        return True
    point = mount_points().get(found)
    if point is not None and point != root and is_within(point, root):
        return False
    raise OSError(errno.ENODEV, "not on the mounted filesystem")


def open_in_mount(
    root: str,
    name: str,
    mount: Holder,
    max_read_bytes: int = 0,
    root_mount_id: int | None = None,
) -> OpenFile | SmallFile | Lookup:
    """Open ``name`` under the mount's real path, race-free. Blocking: run in a thread.

    Args:
        root: the mount's real path (no symlinks).
        name: a validated relative name (no empty, ``.`` or ``..`` segments).
        mount: the mount, recorded in the result.
        max_read_bytes: read files of at most this many bytes whole, in the same thread
            (0: never).
        root_mount_id: for ``require_mountpoint`` mounts, the ID of the mount at
            ``root`` (``app.federation.root``): a file on a mount nested below the root
            is absent, and one on the filesystem beneath the root (the export came
            unmounted since the last probe) fails with ENODEV; None: no check.

    Returns:
        A ``SmallFile`` for a small regular file, an ``OpenFile`` for a larger one (the
        caller closes it), when its real path is inside ``root``; otherwise
        ``Lookup.ABSENT``, ``Lookup.DIRECTORY`` or ``Lookup.FORBIDDEN``.

    Raises:
        OSError: any other failure (EIO, ESTALE, ENOTCONN, ...): the mount is in trouble;
            ENODEV when the file is not on ``root_mount_id``'s mount nor on one nested
            below it: the export is no longer mounted.
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
        if root_mount_id is not None and not _on_mount(path_fd, root, root_mount_id):
            return Lookup.ABSENT  # on a mount nested below the root: refused
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
        # ``st`` is the fstat of the O_PATH descriptor: the same inode, pinned since.
        body = _read_small(fd, st, max_read_bytes) if max_read_bytes else None
    except BaseException:
        os.close(fd)
        raise
    if body is not None:
        os.close(fd)
        return SmallFile(body=body, mtime_ns=st.st_mtime_ns, name=name, mount=mount)
    return OpenFile(fd=fd, size=st.st_size, mtime_ns=st.st_mtime_ns, name=name, mount=mount)


def check_names(
    root: str,
    names: list[tuple[str, bool]],
    mount: Holder,
    max_read_bytes: int,
    root_mount_id: int | None,
    deadline: float,
) -> list[SmallFile | Lookup | None]:
    """Look several names up under one mount, as ``open_in_mount`` does. Blocking.

    The cache's revalidation (``app.federation.refresh``) checks many names in one
    thread hand-off with this: the same race-free open, name by name.

    Args:
        root: the mount's real path.
        names: ``(name, read)`` pairs: ``read`` asks for a small file's bytes (as
            ``open_in_mount`` with ``max_read_bytes``); without it only whether the
            name is there matters.
        mount: the mount, recorded in the results.
        max_read_bytes: see ``open_in_mount``.
        root_mount_id: see ``open_in_mount``.
        deadline: ``time.monotonic()`` after which no further name is looked up (the
            answer would come too late to be of use), in seconds.

    Returns:
        One outcome per name, in order: a ``SmallFile`` or a ``Lookup``, or None for
        anything else (a file too large to read whole, which is closed at once, an
        ``OSError``, or a name not looked up before ``deadline``).
    """
    outcomes: list[SmallFile | Lookup | None] = []
    for name, read in names:
        if time.monotonic() > deadline:
            outcomes.extend([None] * (len(names) - len(outcomes)))
            break
        try:
            found = open_in_mount(root, name, mount, max_read_bytes if read else 0, root_mount_id)
        except OSError:
            outcomes.append(None)
            continue
        if isinstance(found, OpenFile):
            found.close()
            outcomes.append(None)
        else:
            outcomes.append(found)
    return outcomes


def close_if_file(result: object) -> None:
    """Close what a lookup that timed out opened, once it finally returns."""
    if isinstance(result, OpenFile):
        result.close()
