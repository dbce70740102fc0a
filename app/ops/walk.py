"""Walking a mount's tree in its own threads, one directory a call, each with the timeout.

``vend shadows`` and ``vend verify --suggest`` walk mounts this way: listing one
directory is one filesystem operation in the mount's pool (``Mount.call``), so a hung
NFS server costs one ``fs_op_s`` timeout and marks the mount down instead of hanging the
command. Memory holds the directories still to visit, never the files seen: a walk
yields names as it goes.

Only what serving could reach is walked: directories are entered through their real
names, never through symlinks (a symlinked directory could loop or leave the mount);
symlinks to files are yielded, and the lookup that follows (``Mount.lookup``) applies
the same containment rule as a request.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from app.federation.mount import Mount
from app.federation.open import MountUnavailable

MAX_DIRECTORIES_QUEUED: Final = 1_000_000
"""Directories waiting to be listed at once; beyond it a walk stops as incomplete."""


@dataclass
class WalkState:
    """How a walk went.

    Attributes:
        files: file names yielded.
        directories: directories listed.
        error: errno name of the failure that stopped it, or None when complete.
    """

    files: int = 0
    directories: int = 0
    error: str | None = None


def _list_directory(root: str, relative: str) -> tuple[list[str], list[str]]:
    """Files (and symlinks) and real subdirectories of one directory (blocking)."""
    files, directories = [], []
    with os.scandir(f"{root}/{relative}" if relative else root) as entries:
        for entry in entries:
            name = f"{relative}/{entry.name}" if relative else entry.name
            if entry.is_dir(follow_symlinks=False):
                directories.append(name)
            elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                files.append(name)
    files.sort()
    directories.sort()
    return files, directories


async def walk_mount(mount: Mount, state: WalkState) -> AsyncIterator[str]:
    """Yield the relative names of the files under a mount (depth-first, sorted).

    Args:
        mount: the mount; its root is probed first if it has not been.
        state: updated as the walk goes; ``error`` says why it stopped early.

    Yields:
        Names relative to the mount's root (``docs/a.html``), undecoded file names.
    """
    if mount.real_root is None and not await mount.probe():
        state.error = mount.last_error or "EIO"
        return
    root = mount.real_root
    assert root is not None
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            files, directories = await mount.call(_list_directory, root, relative)
        except MountUnavailable as exc:
            if str(exc) in ("EACCES", "EPERM", "ENOENT", "ENOTDIR"):
                continue  # unreadable or vanished directory: serving cannot reach it either
            state.error = str(exc)
            return
        state.directories += 1
        for name in files:
            state.files += 1
            yield name
        pending.extend(reversed(directories))
        if len(pending) > MAX_DIRECTORIES_QUEUED:
            state.error = "E2BIG"
            return
