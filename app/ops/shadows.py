"""``vend shadows``: names held by more than one mount, and whether the right copy wins.

The first mount in priority order that holds a name serves it (the *winner*); copies on
later mounts are *shadowed*. Finding every such name without holding every name in
memory: each mount but the first is walked (``app.ops.walk``), and each file found on
mount *i* is looked up on mounts ``0..i-1`` with ``Mount.lookup``, the call serving uses
(containment and symlink rules included). A name is reported when exactly one earlier
mount holds it, that is while walking its first shadowed copy; the later mounts are then
looked up too, to complete the group. Names held by two earlier mounts were reported
already. Memory is the walk's pending directories and one group at a time.

Copies *differ* when their size or modification time (to the second) differ, or, with
``--hash``, their SHA-256. A shadowed copy is *newer* when its modification time is
later than the winner's: often the sign of an update put on the wrong server.

Every call runs in the mount's own threads with ``timeouts.fs_op_s``: a hung mount times
out once, is marked down, and is reported as not fully walked (or not fully compared)
rather than waited on.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from app.federation.mount import Mount, build_mounts
from app.federation.open import Lookup, MountUnavailable, OpenFile, SmallFile
from app.ops.walk import WalkState, walk_mount
from app.settings import Settings

HASH_CHUNK_BYTES: Final = 1024 * 1024
"""Bytes read per call (each call has the mount's timeout) when hashing a copy."""


@dataclass(frozen=True, slots=True)
class Copy:
    """One mount's copy of a name.

    Attributes:
        mount: the mount's name.
        size_bytes: the size, or None when it could not be looked up.
        mtime_s: modification time in whole seconds since the epoch, or None.
        sha256: hex digest with ``--hash``, else None.
        error: errno name when the lookup failed, else None.
    """

    mount: str
    size_bytes: int | None = None
    mtime_s: int | None = None
    sha256: str | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """JSON-ready data, without empty fields."""
        data = {"mount": self.mount, "size": self.size_bytes, "mtime": self.mtime_s}
        if self.sha256:
            data["sha256"] = self.sha256
        if self.error:
            data["error"] = self.error
        return data


@dataclass(frozen=True, slots=True)
class Shadow:
    """A name held by more than one mount.

    Attributes:
        name: the name relative to every mount (a file name as found, not decoded).
        winner: the copy that is served.
        shadowed: the copies it hides, in priority order.
    """

    name: str
    winner: Copy
    shadowed: tuple[Copy, ...]

    @property
    def differs(self) -> bool:
        """Whether any shadowed copy differs from the winner (size, mtime, hash)."""
        w = self.winner
        return any(
            (c.size_bytes, c.mtime_s, c.sha256) != (w.size_bytes, w.mtime_s, w.sha256)
            for c in self.shadowed
            if c.error is None
        )

    @property
    def newer(self) -> bool:
        """Whether a shadowed copy was modified after the winner."""
        w = self.winner.mtime_s
        return w is not None and any(c.mtime_s is not None and c.mtime_s > w for c in self.shadowed)

    def as_json(self) -> dict[str, Any]:
        """The report line's data."""
        return {
            "name": self.name,
            "winner": self.winner.as_json(),
            "shadowed": [c.as_json() for c in self.shadowed],
            "differs": self.differs,
            "newer": self.newer,
        }


@dataclass
class ShadowRun:
    """How the run went.

    Attributes:
        walks: each walked mount's name and walk state.
        failed: mount name → errno name, for mounts that failed a lookup or a walk.
    """

    walks: list[tuple[str, WalkState]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every mount was walked and every lookup answered."""
        return not self.failed and all(state.error is None for _, state in self.walks)


async def _sha256(mount: Mount, found: OpenFile) -> str:
    digest = hashlib.sha256()
    offset = 0
    while True:
        chunk = await mount.call(os.pread, found.fd, HASH_CHUNK_BYTES, offset)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)
        offset += len(chunk)


async def _copy(mount: Mount, name: str, hash_content: bool, run: ShadowRun) -> Copy | None:
    """The mount's copy of ``name`` (None when it holds none)."""
    try:
        found = await mount.lookup(name)
    except MountUnavailable as exc:
        run.failed[mount.name] = str(exc)
        return Copy(mount.name, error=str(exc))
    if isinstance(found, Lookup):
        return None
    try:
        digest = None
        if hash_content:
            if isinstance(found, SmallFile):
                digest = hashlib.sha256(found.body).hexdigest()
            else:
                digest = await _sha256(mount, found)
        return Copy(mount.name, found.size, found.mtime_ns // 1_000_000_000, digest)
    except MountUnavailable as exc:
        run.failed[mount.name] = str(exc)
        return Copy(mount.name, error=str(exc))
    finally:
        if isinstance(found, OpenFile):
            found.close()


async def find_shadows(
    mounts: Sequence[Mount],
    on_shadow: Callable[[Shadow], None],
    *,
    hash_content: bool = False,
    on_file: Callable[[], None] | None = None,
) -> ShadowRun:
    """Walk the mounts and report each name held by more than one.

    Args:
        mounts: the mounts, in priority order.
        on_shadow: called with each shadowed name's group, as found.
        hash_content: compare SHA-256 digests too.
        on_file: called for each file walked (progress), or None.

    Returns:
        How the run went.
    """
    run = ShadowRun()
    await asyncio.gather(*(mount.probe() for mount in mounts))
    for index, mount in enumerate(mounts[1:], 1):
        state = WalkState()
        run.walks.append((mount.name, state))
        async for name in walk_mount(mount, state):
            if on_file is not None:
                on_file()
            earlier = [await _copy(m, name, hash_content, run) for m in mounts[:index]]
            held = [c for c in earlier if c is not None and c.error is None]
            if len(held) != 1:
                continue
            own = await _copy(mount, name, hash_content, run)
            if own is None:
                continue  # the walk saw it, the lookup did not: a symlink leaving the mount
            later = [await _copy(m, name, hash_content, run) for m in mounts[index + 1 :]]
            shadowed = [own, *(c for c in later if c is not None)]
            on_shadow(Shadow(name, held[0], tuple(shadowed)))
        if state.error is not None:
            run.failed.setdefault(mount.name, state.error)
    return run


async def shadows_of(
    settings: Settings,
    on_shadow: Callable[[Shadow], None],
    *,
    hash_content: bool = False,
    on_file: Callable[[], None] | None = None,
) -> ShadowRun:
    """``find_shadows`` on the configured mounts (their own threads and timeouts).

    Args:
        settings: validated settings.
        on_shadow: called with each group.
        hash_content: compare SHA-256 digests too.
        on_file: called for each file walked, or None.

    Returns:
        How the run went.
    """
    mounts = build_mounts(
        settings.mounts, fs_op_s=settings.timeouts.fs_op_s, threads=settings.threads_per_mount
    )
    try:
        return await find_shadows(mounts, on_shadow, hash_content=hash_content, on_file=on_file)
    finally:
        for mount in mounts:
            mount.close()
