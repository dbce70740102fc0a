"""Which filesystem a path sits on, from ``/proc/self/mountinfo`` (proc(5)).

Used by ``vend check`` to tell operators whether a mount is really NFS (``nfs``,
``nfs4``), a FUSE filesystem (``fuse.sshfs``...), or the local disk beneath an export
that is not mounted (``ext4``...).
"""

from __future__ import annotations

from typing import Final

MOUNTINFO: Final = "/proc/self/mountinfo"


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    return (
        field.encode("latin-1")
        .decode("unicode_escape")
        .encode("latin-1")
        .decode("utf-8", "replace")
    )


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
    try:
        with open(mountinfo, encoding="latin-1") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
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
