"""Which filesystem a path sits on, from ``/proc/self/mountinfo`` (proc(5)).

``filesystem_type`` lets ``vend check`` tell operators whether a mount is really NFS (``nfs``,
``nfs4``), a FUSE filesystem (``fuse.sshfs``...), or the local disk beneath an export
that is not mounted (``ext4``...). ``mount_points`` and ``mount_id_of`` decide what is a
mount point (bind mounts included, which ``os.path.ismount`` misses) and which mount a
file opened under it lies on, by mount ID (``app.federation.root``, ``open.py``).
"""

from __future__ import annotations

import re
from typing import Final

MOUNTINFO: Final = "/proc/self/mountinfo"


_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space; the kernel escapes only
    space, tab, newline and backslash), then decode the path's bytes as UTF-8."""
    raw = _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)
    return raw.encode("latin-1").decode("utf-8", "replace")


def _read_lines(mountinfo: str) -> list[str]:
    """The mountinfo file's lines; none when it cannot be read."""
    try:
        with open(mountinfo, encoding="latin-1") as handle:
            return handle.read().splitlines()
    except OSError:
        return []


def filesystem_type(real_path: str, mountinfo: str = MOUNTINFO) -> str | None:
    """The filesystem type of the mount that holds ``real_path``.

    Args:
        real_path: an absolute path with no symlinks.
        mountinfo: the mountinfo file to read (tests pass their own).

    Returns:
        The type (``"nfs4"``, ``"fuse.sshfs"``, ``"ext4"``...) of the deepest mount point
        containing the path, or None when the file cannot be read.
    """
    best: tuple[int, str] | None = None
    for line in _read_lines(mountinfo):
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        mount_point = _unescape(fields[4])
        fs_type = right.split()[0] if right.split() else "?"
        if (
            mount_point == "/"
            or real_path == mount_point
            or real_path.startswith(mount_point.rstrip("/") + "/")
        ):
            depth = len(mount_point)
            if best is None or depth >= best[0]:
                best = (depth, fs_type)
    return best[1] if best else None


def mount_points(mountinfo: str = MOUNTINFO) -> dict[int, str]:
    """Every mount's ID and mount point, bind mounts included.

    Args:
        mountinfo: the mountinfo file to read (tests pass their own).

    Returns:
        ``{mount ID: mount point}`` (proc(5) fields 1 and 5, unescaped); empty when the
        file cannot be read.
    """
    points: dict[int, str] = {}
    for line in _read_lines(mountinfo):
        fields = line.split(" - ", 1)[0].split()
        if len(fields) >= 5 and fields[0].isdigit():
            points[int(fields[0])] = _unescape(fields[4])
    return points


def mount_id_of(fd: int) -> int | None:
    """The ID of the mount an open descriptor lies on (``mnt_id`` of proc(5)'s fdinfo).

    Args:
        fd: an open descriptor (``O_PATH`` is enough).

    Returns:
        The mount ID, or None when the kernel does not say.
    """
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as handle:
            info = handle.read()
    except OSError:
        return None
    for line in info.splitlines():
        if line.startswith(b"mnt_id:"):
            return int(line.split()[1])
    return None
