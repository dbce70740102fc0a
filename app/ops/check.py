"""``vend check`` and ``vend locate``: what operators ask of the mounts, without a server.

Also the start-up check of the redirect map (``check_redirect_map``): ``vend serve``
refuses to start (exit 2) when an entry is bad or a target resolves on no mount.

Every probe runs in the mount's own threads with the configured timeout, so a hung NFS
server makes its line say ``ETIMEDOUT`` instead of hanging the command.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from app.federation.lookup import list_copies
from app.federation.mount import Mount, build_mounts
from app.federation.open import Lookup, MountUnavailable, OpenFile, SmallFile
from app.federation.redirects import load_redirect_map
from app.federation.root import RootFacts, probe_root
from app.http.names import compile_pattern
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class MountReport:
    """What ``vend check`` found about one mount.

    Attributes:
        name: the mount's name.
        path: its configured path (shown to the operator, never to clients).
        facts: the probe's findings (``app.federation.root.RootFacts``: exists,
            directory, readable, mount point from /proc/self/mountinfo with bind mounts
            counted, filesystem type, and the errno name of a failure or timeout).
    """

    name: str
    path: str
    facts: RootFacts


def _probe(path: str, require_mountpoint: bool, name: str) -> MountReport:
    """Blocking probe of one mount root (``app.federation.root``), as a report."""
    return MountReport(name=name, path=path, facts=probe_root(path, require_mountpoint))


async def check_mounts(settings: Settings) -> list[MountReport]:
    """Probe every configured mount, all at once, each with the timeout.

    Args:
        settings: validated settings.

    Returns:
        One report per mount, in priority order.
    """
    mounts = build_mounts(settings.mounts, fs_op_s=settings.timeouts.fs_op_s, threads=1)

    async def one(mount: Mount) -> MountReport:
        s = mount.settings
        try:
            return await mount.call(_probe, str(s.path), s.require_mountpoint, s.name)
        except MountUnavailable as exc:
            facts = RootFacts(exists=True, error=str(exc))
            return MountReport(name=s.name, path=str(s.path), facts=facts)

    try:
        return list(await asyncio.gather(*(one(m) for m in mounts)))
    finally:
        for mount in mounts:
            mount.close()


@dataclass(frozen=True, slots=True)
class Copy:
    """One mount's answer for a name, for ``vend locate``.

    Attributes:
        mount: the mount's name.
        state: ``"file"``, ``"absent"``, ``"directory"``, ``"forbidden"`` or an errno name.
        size_bytes: the file's size, for ``"file"``.
        mtime_ns: its modification time, for ``"file"``.
    """

    mount: str
    state: str
    size_bytes: int | None = None
    mtime_ns: int | None = None


async def locate_name(settings: Settings, name: str) -> list[Copy]:
    """Look a validated name up on every mount.

    Args:
        settings: validated settings.
        name: a name that passed the fixed rules and the whitelist.

    Returns:
        One ``Copy`` per mount, in priority order; the first ``"file"`` is what vend serves.
    """
    mounts = build_mounts(settings.mounts, fs_op_s=settings.timeouts.fs_op_s, threads=1)
    try:
        copies = []
        for mount, found in await list_copies(mounts, name):
            if isinstance(found, (OpenFile, SmallFile)):
                copies.append(Copy(mount.name, "file", found.size, found.mtime_ns))
            elif isinstance(found, Lookup):
                copies.append(Copy(mount.name, found.value))
            else:
                copies.append(Copy(mount.name, found))
        return copies
    finally:
        for mount in mounts:
            mount.close()


async def check_redirect_map(settings: Settings) -> int:
    """Load the redirect map and resolve every target on the mounts (``vend serve`` start).

    Args:
        settings: validated settings.

    Returns:
        How many entries the map has (0 when none is configured).

    Raises:
        RedirectMapError: the map is unusable; the message names the entry.
    """
    if not settings.redirect_map:
        return 0
    mounts = build_mounts(settings.mounts, fs_op_s=settings.timeouts.fs_op_s, threads=4)
    try:
        await asyncio.gather(*(mount.probe() for mount in mounts))
        pattern = compile_pattern(settings.name_pattern)
        return len((await load_redirect_map(settings.redirect_map, pattern, mounts)).targets)
    finally:
        for mount in mounts:
            mount.close()
