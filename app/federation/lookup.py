"""Federation: which mount serves a name.

Mounts are searched in their configured order and the first that holds the name as a
regular file serves it; copies on later mounts are shadowed. What else can happen:

- a directory, where ``index_names`` is set and the request has no trailing ``/``:
  a redirect to the same path with ``/`` added, as Apache's mod_dir does;
- ``EACCES`` on the first mount that has the name: 403, the search stops there;
- a mount that is down or fails (I/O error, timeout): if it is the mount that served
  the name last (``known_mount``, from the cache), 503: a later mount may hold an older
  copy. Otherwise the search goes on with the next mounts, and when none has the name
  the answer is 503 rather than 404, because the failed mount may hold it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from app.federation.mount import Mount, MountUnavailable
from app.federation.open import Lookup, OpenFile, SmallFile


class Miss(Enum):
    """Why no file was found."""

    NOT_FOUND = 404
    FORBIDDEN = 403
    UNAVAILABLE = 503


@dataclass(frozen=True, slots=True)
class Redirect:
    """The name is a directory: the caller redirects to the request path with ``/`` added.

    Attributes:
        mount: the mount holding the directory.
    """

    mount: Mount


async def find_file(
    mounts: Sequence[Mount],
    candidates: Sequence[str],
    *,
    redirect_directories: bool,
    max_read_bytes: int = 0,
    known_mount: Mount | None = None,
) -> OpenFile | SmallFile | Redirect | Miss:
    """Find the first mount holding one of ``candidates`` as a regular file.

    Args:
        mounts: the mounts, in priority order.
        candidates: names to try on each mount, in order (one name, or a directory's
            index names).
        redirect_directories: answer a directory with a ``Redirect`` (index names are
            configured and the request had no trailing ``/``); otherwise a directory is
            treated as absent.
        max_read_bytes: files of at most this size are read whole in the mount's thread
            and returned as a ``SmallFile`` (0: never).
        known_mount: the mount that served this name last (from the cache); when it is
            down or fails, the answer is 503 rather than an older copy from a later
            mount (``down_mount_policy = "unavailable"``). None: skip failed mounts.

    Returns:
        The small file's bytes, the open file (the caller closes it), a ``Redirect``, or
        a ``Miss``.
    """
    failed = False
    for mount in mounts:
        for name in candidates:
            try:
                found = await mount.lookup(name, max_read_bytes)
            except MountUnavailable:
                if mount is known_mount:
                    return Miss.UNAVAILABLE
                failed = True
                break
            if isinstance(found, (OpenFile, SmallFile)):
                return found
            if found is Lookup.FORBIDDEN:
                return Miss.FORBIDDEN
            if found is Lookup.DIRECTORY and redirect_directories:
                return Redirect(mount)
    return Miss.UNAVAILABLE if failed else Miss.NOT_FOUND


async def list_copies(
    mounts: Sequence[Mount], name: str
) -> list[tuple[Mount, OpenFile | SmallFile | Lookup | str]]:
    """Look ``name`` up on every mount, for ``vend locate``.

    Args:
        mounts: the mounts, in priority order.
        name: a validated relative name.

    Returns:
        One ``(mount, outcome)`` per mount: an ``OpenFile`` (closed already), a ``Lookup``,
        or the errno name of a failure.
    """
    copies: list[tuple[Mount, OpenFile | SmallFile | Lookup | str]] = []
    for mount in mounts:
        try:
            found = await mount.lookup(name)
        except MountUnavailable as exc:
            copies.append((mount, str(exc)))
            continue
        if isinstance(found, OpenFile):
            found.close()
        copies.append((mount, found))
    return copies
