"""What a mount's root is: one blocking probe, shared by the health probe and ``vend check``.

"Mount point" is decided from ``/proc/self/mountinfo`` (proc(5)), not ``os.path.ismount``
(which compares the device of the path and its parent, and so misses a bind mount of
the same filesystem): the root is a mount point when the mount its descriptor lies on
(by mount ID, from ``/proc/self/fdinfo``) is mounted exactly at the root's real path.
That mount ID is what ``open_in_mount`` compares each opened file against, so a file on
a mount nested below the root is refused.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from app.federation.mountinfo import filesystem_type, mount_id_of, mount_points


@dataclass(frozen=True, slots=True)
class RootFacts:
    """What one probe of a mount root found.

    Attributes:
        real: the root's real path (no symlinks), or None when it does not resolve.
        mount_id: ID of the mount the root lies on, or None.
        exists, is_directory, readable: the probe's findings.
        is_mount_point: a mount (bind mounts included) sits exactly at ``real``.
        fs_type: its filesystem type, from mountinfo, or None.
        error: errno name why it is not usable (``ENOENT``, ``ENOTDIR``, ``EACCES``,
            ``ENOTMOUNTPOINT``, ``EIO``...), or None.
    """

    real: str | None = None
    mount_id: int | None = None
    exists: bool = False
    is_directory: bool = False
    readable: bool = False
    is_mount_point: bool = False
    fs_type: str | None = None
    error: str | None = None

    @property
    def usable(self) -> bool:
        """True when vend can serve from this root."""
        return self.error is None


def probe_root(path: str, require_mountpoint: bool) -> RootFacts:
    """Probe a mount root (blocking: run it in the mount's probe thread, with the timeout).

    A stale NFS file handle (ESTALE) is probed again once, as lookups do.

    Args:
        path: the configured path.
        require_mountpoint: the root must be a mount point to be usable.

    Returns:
        The facts; ``error`` says why the root is not usable. Never raises OSError.
    """
    facts = _probe_once(path, require_mountpoint)
    if facts.error == "ESTALE":
        facts = _probe_once(path, require_mountpoint)
    return facts


def _probe_once(path: str, require_mountpoint: bool) -> RootFacts:
    try:
        real = os.path.realpath(path, strict=True)
        fd = os.open(real, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        return RootFacts(error=errno.errorcode.get(exc.errno or 0, "EIO"))
    try:
        st = os.fstat(fd)
        mount_id = mount_id_of(fd)
    except OSError as exc:
        return RootFacts(real=real, exists=True, error=errno.errorcode.get(exc.errno or 0, "EIO"))
    finally:
        os.close(fd)
    is_dir = stat.S_ISDIR(st.st_mode)
    readable = is_dir and os.access(real, os.R_OK | os.X_OK)
    is_mp = mount_id is not None and mount_points().get(mount_id) == real
    error = None
    if not is_dir:
        error = "ENOTDIR"
    elif not readable:
        error = "EACCES"
    elif require_mountpoint and not is_mp:
        error = "ENOTMOUNTPOINT"
    return RootFacts(
        real=real,
        mount_id=mount_id,
        exists=True,
        is_directory=is_dir,
        readable=readable,
        is_mount_point=is_mp,
        fs_type=filesystem_type(real),
        error=error,
    )
