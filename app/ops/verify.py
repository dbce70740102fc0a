"""``vend verify``: which old links will work on vend, and which will not.

Each distinct old link (``app.ops.sources``) gets one ``Outcome``. Offline, a link is
resolved by exactly the code that answers requests: ``request_candidates`` (the fixed
name rules and the whitelist), ``find_file`` (the mounts in order, each in its own
threads with its timeout, read-only), and the redirect map; so ``vend verify`` and
``vend serve`` cannot disagree. Online (``app.ops.online``) the same links are requested
from a running front. Links are checked a bounded number at a time by worker coroutines
pulling from one iterator, so memory holds the distinct links and no more; results are
streamed to the report as they come.
"""

from __future__ import annotations

import asyncio
import codecs

# Loaded now: after ``switch_user`` the interpreter's own files may be out of reach
# (asyncio.to_thread imports this on first use).
import concurrent.futures.thread  # noqa: F401
import heapq
import os
import pwd
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from app.federation.health import probe_forever
from app.federation.lookup import Miss, Redirect, find_file
from app.federation.mount import Mount, build_mounts
from app.federation.open import OpenFile, SmallFile
from app.federation.redirects import RedirectMap, load_redirect_map
from app.http.names import NameRefused, compile_pattern, request_candidates
from app.ops.sources import OldLinks
from app.settings import Settings

TOP_BROKEN: Final = 20
"""Broken links shown on the terminal, most used first."""


class Outcome(Enum):
    """What an old link gets; ``SERVED`` and ``REDIRECTED`` count as working."""

    SERVED = "served"
    DIFFERS = "differs"  # served, but size or modification time differ from the listing
    REDIRECTED = "redirected"  # the redirect map sends it to a served name
    REFUSED = "refused"  # 400: the name rules or the whitelist
    NOT_FOUND = "not found"
    FORBIDDEN = "forbidden"
    UNAVAILABLE = "unavailable"  # a mount failing (503)

    @property
    def works(self) -> bool:
        """Whether a client following the old link gets the content."""
        return self in (Outcome.SERVED, Outcome.REDIRECTED)


_MISSES: Final = {
    Miss.NOT_FOUND: Outcome.NOT_FOUND,
    Miss.FORBIDDEN: Outcome.FORBIDDEN,
    Miss.UNAVAILABLE: Outcome.UNAVAILABLE,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """One link's outcome and why.

    Attributes:
        outcome: the outcome.
        mount: the serving mount (offline only).
        rule: the refusing rule (offline only), e.g. ``double_encoding``, ``name_pattern``.
        detail: more (``size 120 != 100``, a redirect's target, an HTTP status).
        name: the decoded name, where the name rules accepted it.
    """

    outcome: Outcome
    mount: str | None = None
    rule: str | None = None
    detail: str | None = None
    name: str | None = None


Listed = tuple[int, int] | None
"""A listing's (size in bytes, modification time in whole seconds), or None."""


def compare_listing(size: int, mtime_s: int, listed: Listed) -> str | None:
    """How a served file differs from the old server's listing, or None.

    Args:
        size: the served file's size, bytes.
        mtime_s: its modification time, whole seconds since the epoch.
        listed: the listing's values, or None (nothing to compare).

    Returns:
        ``"size A != B"`` and/or ``"mtime A != B"`` (served first, listed second), or None.
    """
    if listed is None:
        return None
    differences = []
    if size != listed[0]:
        differences.append(f"size {size} != {listed[0]}")
    if mtime_s != listed[1]:
        differences.append(f"mtime {mtime_s} != {listed[1]}")
    return ", ".join(differences) or None


@dataclass(frozen=True, slots=True)
class OfflineChecker:
    """Resolves links as ``vend serve`` would, on the configured mounts.

    Attributes:
        mounts: the mounts, in priority order (probed).
        pattern: the compiled whitelist.
        index_names: the configured index names.
        redirects: the redirect map.
    """

    mounts: Sequence[Mount]
    pattern: re.Pattern[str]
    index_names: Sequence[str]
    redirects: RedirectMap

    async def check(self, target: bytes, listed: Listed = None, *, hops: int = 1) -> Verdict:
        """Resolve one request-target, read-only.

        Args:
            target: the raw request-target without query.
            listed: the old server's size and mtime, or None.
            hops: redirects still followed (a directory's ``/``, the redirect map).

        Returns:
            The verdict.
        """
        try:
            request, candidates = request_candidates(target, self.pattern, self.index_names)
        except NameRefused as refusal:
            return Verdict(Outcome.REFUSED, rule=refusal.rule)
        if not candidates:
            return Verdict(Outcome.NOT_FOUND, name=request.name)
        found = await find_file(
            self.mounts,
            candidates,
            redirect_directories=bool(self.index_names) and not request.wants_index,
        )
        if isinstance(found, (OpenFile, SmallFile)):
            if isinstance(found, OpenFile):
                found.close()
            differs = compare_listing(found.size, found.mtime_ns // 1_000_000_000, listed)
            outcome = Outcome.DIFFERS if differs else Outcome.SERVED
            return Verdict(outcome, mount=found.mount.name, detail=differs, name=request.name)
        if isinstance(found, Redirect):
            return await self._follow(target + b"/", hops, request.name)
        if found is Miss.NOT_FOUND and not request.wants_index:
            location = self.redirects.location(request.name)
            if location is not None:
                return await self._follow(location, hops, request.name)
        return Verdict(_MISSES[found], name=request.name)

    async def _follow(self, location: bytes, hops: int, name: str) -> Verdict:
        if hops <= 0:
            return Verdict(Outcome.NOT_FOUND, detail="too many redirects", name=name)
        after = await self.check(location, hops=hops - 1)
        if after.outcome.works:
            where = location.decode("ascii")
            return Verdict(Outcome.REDIRECTED, mount=after.mount, detail=where, name=name)
        return Verdict(after.outcome, after.mount, after.rule, after.detail, name)


@dataclass
class Tally:
    """Counts per outcome, and the most used broken links.

    Attributes:
        paths: distinct links per outcome.
        hits: hits per outcome.
        broken: a min-heap of the ``TOP_BROKEN`` most used links that do not work.
    """

    paths: Counter[Outcome] = field(default_factory=Counter)
    hits: Counter[Outcome] = field(default_factory=Counter)
    broken: list[tuple[int, bytes, Verdict]] = field(default_factory=list)

    def add(self, target: bytes, hits: int, verdict: Verdict) -> None:
        """Count one link's verdict."""
        self.paths[verdict.outcome] += 1
        self.hits[verdict.outcome] += hits
        if verdict.outcome.works:
            return
        item = (hits, target, verdict)
        if len(self.broken) < TOP_BROKEN:
            heapq.heappush(self.broken, item)
        elif item[:2] > self.broken[0][:2]:
            heapq.heapreplace(self.broken, item)

    def top_broken(self) -> list[tuple[int, bytes, Verdict]]:
        """The most used broken links, most hits first."""
        return sorted(self.broken, key=lambda i: (-i[0], i[1]))

    @property
    def all_work(self) -> bool:
        """True when every link is served or redirected."""
        return all(outcome.works for outcome in self.paths)


Check = Callable[[bytes, Listed], Awaitable[Verdict]]
Sink = Callable[[bytes, int, Verdict], None]


async def check_all(
    links: Iterable[tuple[bytes, int]],
    listed: dict[bytes, tuple[int, int]],
    check: Check,
    sink: Sink,
    *,
    jobs: int,
) -> None:
    """Check every link with at most ``jobs`` checks running at once.

    Args:
        links: (request-target, hits) pairs.
        listed: listing values by request-target.
        check: resolves one link.
        sink: called with each link, its hits and its verdict, as each is done.
        jobs: checks at once.
    """
    pending = iter(links)

    async def worker() -> None:
        for target, hits in pending:  # one shared iterator: each link is taken once
            sink(target, hits, await check(target, listed.get(target)))

    await asyncio.gather(*(worker() for _ in range(max(1, jobs))))


async def verify_offline(
    settings: Settings, links: OldLinks, sink: Sink, *, jobs: int
) -> list[tuple[str, str | None]]:
    """Resolve every link on the configured mounts, as ``vend serve`` would.

    The mounts get their own threads (``threads_per_mount``) and timeouts, and the
    background probe runs as in the server, so a mount that recovers is used again.

    Args:
        settings: validated settings.
        links: the distinct old links.
        sink: receives each link, its hits and its verdict.
        jobs: checks at once.

    Returns:
        Each mount's name and its last error (None when it ended the run up).

    Raises:
        RedirectMapError: the configured redirect map is unusable.
    """
    mounts = build_mounts(
        settings.mounts, fs_op_s=settings.timeouts.fs_op_s, threads=settings.threads_per_mount
    )
    prober: asyncio.Task[None] | None = None
    try:
        await asyncio.gather(*(mount.probe() for mount in mounts))
        pattern = compile_pattern(settings.name_pattern)
        redirects = await load_redirect_map(settings.redirect_map, pattern, mounts)
        checker = OfflineChecker(mounts, pattern, settings.index_names, redirects)
        prober = asyncio.create_task(
            probe_forever(lambda: mounts, settings.timeouts.probe_interval_s)
        )
        await check_all(links.hits.items(), links.listed, checker.check, sink, jobs=jobs)
        return [(m.name, None if m.up else m.last_error) for m in mounts]
    finally:
        if prober is not None:
            prober.cancel()
        for mount in mounts:
            mount.close()


class UserError(ValueError):
    """``--user`` names no user, or switching to it is not allowed."""


def switch_user(name: str | None) -> str:
    """Become ``name`` for the rest of the process, so the kernel checks access as vend's user.

    Access is then checked by the same ``open(2)`` calls that serving makes, with that
    user's uid, gid and supplementary groups: no permission bits are second-guessed.
    Switching needs root; the whole process switches (the report is written as that
    user too).

    Args:
        name: a user name or numeric uid, or None to stay the invoking user.

    Returns:
        The name of the user access is now checked as.

    Raises:
        UserError: no such user, or another user asked for without being root.
    """
    current = pwd.getpwuid(os.geteuid())
    if name is None:
        return current.pw_name
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise UserError(f"--user {name!r}: no such user") from None
    if entry.pw_uid == os.geteuid():
        return entry.pw_name
    if os.geteuid() != 0:
        raise UserError(f"--user {name!r}: only root can check as another user (use sudo)")
    # After the switch the interpreter's own files (under root's home, say) may be out of
    # reach: look up now what is otherwise loaded lazily (mountinfo is read as Latin-1).
    codecs.lookup("latin-1")
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    return entry.pw_name
