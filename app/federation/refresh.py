"""Revalidating hot cache entries before they go stale, many names per thread hand-off.

A small file's cache entry (``app.federation.cache``) is trusted for ``cache.ttl_s``
seconds; then the next request for it looks the name up again through the application,
in the mounts' threads: with 2,000 hot names and a 2 s TTL that is 1,000 lookups a
second, each a hand-off per mount (~170 µs each here) and each holding its requests.

So an entry used in the last quarter of its TTL is handed to the ``Refresher``
(``NameCache.on_due``), which gathers such names for ``GATHER_S`` seconds and then looks
them all up again in one call per mount (``Mount.check_names``, at most ``BATCH_NAMES``
names a call, at most half the mount's threads at once, so that requests' lookups always
find room in its queue), on every mount up to the one serving each name, in parallel, with the
same race-free open as a request's lookup (``app.federation.open``). An entry is
confirmed, and trusted for another ``ttl_s`` from the moment the revalidation started,
only when the lookup finds exactly what it holds:

- every earlier mount answers "absent" (a directory counts as absent unless
  ``index_names`` makes directories redirects);
- the serving mount still holds it as a small file with the same bytes, from which the
  same validators are built (the same ETag and Last-Modified: a modification time in
  the future, which Last-Modified clamps to the present, is never confirmed).

Anything else (a new copy on an earlier mount, a changed, grown, forbidden or deleted
file, a mount that is down, overdue, busy, failing or slow: one whose lookup deadline is
above its floor, or that does not answer within the last quarter of the TTL, when the
answer would come too late; names not reached by then are not looked up at all, so a
slow mount's threads are never held for them) leaves the entry alone: it goes stale at
its time and the next request looks the name up as before, with the full
fault policy of ``app.federation.lookup``. So the staleness bound of the cache holds,
and no answer is ever confirmed that a request's own lookup would not give.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

from app.federation.cache import REFRESH_AT, CachedFile, NameCache
from app.federation.memory import NameMemory
from app.federation.mount import Mount
from app.federation.open import Lookup, SmallFile
from app.http.conditional import make_validators

log = logging.getLogger("vend.refresh")

GATHER_S: Final = 0.1
"""How long due names are gathered before they are revalidated together, in seconds."""
BATCH_NAMES: Final = 64
"""Most names looked up in one call on one mount."""


class Refresher:
    """Revalidates a ``NameCache``'s hot small files (see the module docstring).

    Args:
        cache: the name cache; its ``on_due`` is set to this refresher.
        mounts: the mounts the cache's entries come from, in priority order.
        memory: where names live; a confirmed name is remembered again.
        directories_absent: a directory on an earlier mount does not shadow a name
            (no ``index_names``); else it does (it would be a redirect).
        counted: called after each revalidation with ``(confirmed, left)``: how many
            entries were confirmed and how many left to go stale; or None.
    """

    def __init__(
        self,
        cache: NameCache,
        mounts: Sequence[Mount],
        memory: NameMemory,
        *,
        directories_absent: bool,
        counted: Callable[[int, int], object] | None = None,
    ) -> None:
        self.cache = cache
        self.counted = counted
        self.mounts = list(mounts)
        self.memory = memory
        self.directories_absent = directories_absent
        self.confirmed = 0
        """Entries confirmed so far."""
        self._due: dict[str, CachedFile] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[int] | None = None
        self._closed = False
        cache.on_due = self.want

    def want(self, name: str, entry: CachedFile) -> None:
        """Revalidate ``entry`` soon, with the others due: ``NameCache.on_due``.

        Called on the event loop; elsewhere (no running loop) the entry just goes stale.

        Args:
            name: the name the entry is stored for.
            entry: the cache entry, used past ``cache.REFRESH_AT`` of its TTL.
        """
        if self._closed:
            return
        self._due[name] = entry
        if self._timer is None and self._task is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._due.clear()
                return
            self._timer = loop.call_later(GATHER_S, self._start)

    def close(self) -> None:
        """Stop: nothing more is revalidated (a reload made a new cache, or shutdown)."""
        self._closed = True
        self.cache.on_due = None
        self._due.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()

    def _start(self) -> None:
        self._timer = None
        due, self._due = self._due, {}
        if due and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self.revalidate(due))
            self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[int]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("revalidation failed", exc_info=task.exception())
        if self._due and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(GATHER_S, self._start)

    async def revalidate(self, due: dict[str, CachedFile]) -> int:
        """Look the names up again and confirm the entries that still hold.

        Args:
            due: the entries to revalidate, by name.

        Returns:
            How many entries were confirmed.
        """
        started = time.monotonic()
        index = {id(mount): i for i, mount in enumerate(self.mounts)}
        serving: dict[str, int] = {}
        for name, entry in due.items():
            k = index.get(id(entry.mount))
            if k is not None:
                serving[name] = k
        asks: list[tuple[int, list[tuple[str, bool]]]] = []
        for j in range(len(self.mounts)):
            names = [(name, j == k) for name, k in serving.items() if k >= j]
            for at in range(0, len(names), BATCH_NAMES):
                asks.append((j, names[at : at + BATCH_NAMES]))
        max_read = self.cache.max_file_bytes
        # Past the last quarter of the TTL the entries have gone stale: a later answer is
        # of no use, and a slow mount's threads are not held for it.
        deadline = started + self.cache.ttl_s * (1 - REFRESH_AT)
        # At most half a mount's threads (one at least) check at once: thousands of due
        # names must not fill its queue, where a request's lookup would find no room (503).
        limits = [asyncio.Semaphore(max(1, mount.threads // 2)) for mount in self.mounts]

        async def ask(
            j: int, names: list[tuple[str, bool]]
        ) -> list[SmallFile | Lookup | None] | None:
            async with limits[j]:
                return await self.mounts[j].check_names(names, max_read, deadline)

        answers = await asyncio.gather(*(ask(j, names) for j, names in asks))
        outcomes: list[dict[str, SmallFile | Lookup | None]] = [{} for _ in self.mounts]
        for (j, names), answer in zip(asks, answers, strict=True):
            if answer is not None:
                outcomes[j].update(zip((name for name, _ in names), answer, strict=True))
        confirmed = 0
        for name, k in serving.items():
            entry = due[name]
            if self._holds(name, entry, [outcomes[j].get(name) for j in range(k + 1)]):
                entry.checked_at = started
                entry.due = False
                self.memory.remember(name, entry.mount.key, started)
                confirmed += 1
        self.confirmed += confirmed
        if self.counted is not None:
            self.counted(confirmed, len(due) - confirmed)
        return confirmed

    def _holds(self, name: str, entry: CachedFile, found: list[SmallFile | Lookup | None]) -> bool:
        """Whether the outcomes on mounts 1..k (k serving) give exactly ``entry``."""
        *earlier, last = found
        for outcome in earlier:
            if outcome is Lookup.ABSENT:
                continue
            if outcome is Lookup.DIRECTORY and self.directories_absent:
                continue
            return False
        return (
            isinstance(last, SmallFile)
            and last.body == entry.body
            and make_validators(last.size, last.mtime_ns) == entry.rep.validators
            and self.cache.holds(name, entry)
        )


__all__ = ["BATCH_NAMES", "GATHER_S", "Refresher"]
