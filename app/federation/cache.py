"""The name cache: which mount serves a name, its validators, and small files' bytes.

This is the hot path's reason to exist. A request for a name found here within the last
``ttl_s`` seconds is answered from memory on the event loop: no thread hand-off and no
filesystem call, so neither the ~170 µs of a hand-off nor a hung mount can touch it.

Staleness bound: an entry is used for at most ``ttl_s`` seconds after the lookup that
made it (default 2 s, below NFS's own minimum attribute cache time, ``acregmin`` = 3 s).
After that the next request for the name looks it up again on every mount, in order, in
the mounts' threads. So a file replaced on a mount, a new copy on an earlier mount, or a
deleted file is served in its new state at most ``ttl_s`` seconds later. Misses (no
mount has the name) are kept for ``miss_ttl_s`` seconds. I/O errors and timeouts are
never cached.

An entry of a small file used in the last quarter of its TTL is revalidated before it
goes stale, in batches, one thread hand-off per mount per batch
(``app.federation.refresh``): the same lookup, so the bound above holds, counted from
the revalidation.

Only files of at most ``max_file_bytes`` keep their bytes here; bounded in entries and in
bytes, least recently used first out. Larger files keep their validators, and their
bodies go out with sendfile. Where names live, for the fault policy, is remembered much
longer, and across reloads, by ``app.federation.memory``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from app.federation.open import Holder
from app.http.responses import Representation

REFRESH_AT: Final = 0.75
"""Share of ``ttl_s`` after which a small file's entry in use is handed to ``on_due``."""


@dataclass(slots=True)
class CachedFile:
    """A name's serving mount and representation, with the bytes of a small file.

    Attributes:
        mount: the mount that served it.
        rep: its representation metadata and prepared headers.
        body: the whole file for a small file, else None.
        checked_at: ``time.monotonic()`` of the lookup, in seconds.
        prebuilt: the server's ready-made answers for this entry (``app.server.hotpath``),
            kept from its second answer there on.
        due: handed to ``on_due`` for revalidation since ``checked_at``.
    """

    mount: Holder
    rep: Representation
    body: bytes | None
    checked_at: float
    prebuilt: object = None
    due: bool = False


@dataclass(slots=True)
class CachedMiss:
    """No mount had the name at ``checked_at`` (``time.monotonic()``, seconds)."""

    checked_at: float


class NameCache:
    """A bounded LRU map from request names to ``CachedFile`` or ``CachedMiss``.

    Args:
        ttl_s: how long a found name is trusted, in seconds (0 disables the cache).
        miss_ttl_s: how long a miss is trusted, in seconds.
        max_entries: most names kept.
        max_bytes: most file bytes kept, in bytes.
        max_file_bytes: largest file whose bytes are kept, in bytes.

    Attributes:
        on_due: called with ``(name, entry)`` once, when a small file's entry is used
            past ``REFRESH_AT`` of its TTL, so that it can be revalidated
            before it goes stale (``app.federation.refresh``); or None.
    """

    def __init__(
        self,
        *,
        ttl_s: float,
        miss_ttl_s: float,
        max_entries: int,
        max_bytes: int,
        max_file_bytes: int,
    ) -> None:
        self.ttl_s = ttl_s
        self.miss_ttl_s = miss_ttl_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes if ttl_s > 0 else 0
        self.on_due: Callable[[str, CachedFile], object] | None = None
        self._entries: OrderedDict[str, CachedFile | CachedMiss] = OrderedDict()
        self._bytes = 0

    @property
    def body_bytes(self) -> int:
        """Bytes of file bodies held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, now: float) -> CachedFile | CachedMiss | None:
        """The fresh entry for ``name``, or None when absent or older than its TTL.

        Args:
            name: the validated request name.
            now: ``time.monotonic()``, in seconds.
        """
        entry = self._entries.get(name)
        if entry is None:
            return None
        if isinstance(entry, CachedFile):
            age = now - entry.checked_at
            if age >= self.ttl_s:
                return None
            self._entries.move_to_end(name)
            if age >= self.ttl_s * REFRESH_AT and not entry.due and entry.body is not None:
                on_due = self.on_due
                if on_due is not None:
                    entry.due = True
                    on_due(name, entry)
            return entry
        if now - entry.checked_at >= self.miss_ttl_s:
            return None
        self._entries.move_to_end(name)
        return entry

    def holds(self, name: str, entry: CachedFile) -> bool:
        """Whether ``entry`` is still the one stored for ``name``."""
        return self._entries.get(name) is entry

    def put_file(
        self, name: str, mount: Holder, rep: Representation, body: bytes | None, now: float
    ) -> CachedFile:
        """Remember where ``name`` was found, its representation, and a small body.

        Args:
            name: the validated request name.
            mount: the mount that holds it.
            rep: its representation.
            body: the whole file when it has at most ``max_file_bytes``, else None.
            now: ``time.monotonic()``, in seconds.

        Returns:
            The stored entry (stored only when the cache is enabled).
        """
        if body is not None and len(body) > self.max_file_bytes:
            body = None
        entry = CachedFile(mount=mount, rep=rep, body=body, checked_at=now)
        if self.ttl_s > 0:
            self._store(name, entry)
        return entry

    def put_miss(self, name: str, now: float) -> None:
        """Remember that no mount had ``name`` (for ``miss_ttl_s`` seconds)."""
        if self.miss_ttl_s > 0:
            self._store(name, CachedMiss(checked_at=now))

    def _store(self, name: str, entry: CachedFile | CachedMiss) -> None:
        self._drop(name)
        self._entries[name] = entry
        if isinstance(entry, CachedFile) and entry.body is not None:
            self._bytes += len(entry.body)
        while self._entries and (
            len(self._entries) > self.max_entries or self._bytes > self.max_bytes
        ):
            self._drop(next(iter(self._entries)))

    def _drop(self, name: str) -> None:
        old = self._entries.pop(name, None)
        if isinstance(old, CachedFile) and old.body is not None:
            self._bytes -= len(old.body)
