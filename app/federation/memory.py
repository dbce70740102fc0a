"""The memory of where names live: which mount last served each name.

``down_mount_policy = "unavailable"`` needs it: a name known to live on a mount that is
down (or overdue) must get 503, never an older copy from a later mount. It is consulted
only for that, and to start a lookup on the mounts up to the remembered one first
(``app.federation.lookup``); it never makes vend skip a healthy mount.

One table for every worker. It is a fixed-size hash table in one mapped file,
``vend-names`` in the metrics directory that ``vend serve --workers N`` makes
(``PROMETHEUS_MULTIPROC_DIR``); the first worker creates it, the others (and a worker
started later in a dead one's place) map the same file, so a name served by one worker
is remembered by all. A single process maps anonymous memory with the same layout. A
reload (SIGHUP) keeps it; a restart of ``vend serve`` loses it.

Layout. A 4 KiB header (magic, bucket count, the mount registry), then buckets of
``SLOTS`` 8-byte slots (one 64-byte cache line each). A name's 128-bit BLAKE2b hash picks
two buckets; it is stored in the emptier one ("two choices"), as one 64-bit word::

    bit 63 valid | bits 43-62 minute stamp (20 bits) | bits 35-42 mount id | 35-bit tag

Torn entries cannot be seen. Readers and writers use 8-byte aligned words through a
``memoryview`` cast to ``"Q"``: CPython stores and loads such an item with a fixed-size
``memcpy`` of 8 bytes, which compilers emit as one 8-byte move, and an aligned 8-byte
load or store is single-copy atomic on x86-64 and AArch64. So a reader sees a word
either before or after a write, never half of each; readers take no lock. Writers (a
new name, a name whose mount or minute changed, a forgotten name, the registry) take
an ``fcntl`` lock on the file for the few word writes, so two workers never pick the
same free slot for different names (a lost name) or store one name twice.

Mount ids. Entries hold a small id; the header's registry maps each id to a hash of the
mount's key (its configured path). ``configure`` (start and every reload) registers
the mounts now configured and retires the ids of the others, so entries of a removed
mount read as unknown, and a mount added again later gets a new id (nothing known).
When all 255 ids have been used, the table is emptied and the ids start again (logged).

Bounds. ``bucket count = ceil(2 x remember_names / SLOTS)``: 16 bytes a name, so the
default 500,000 names take 8 MB (7.6 MiB, shared by all workers) and the largest
setting, 5,000,000, 80 MB. An entry is kept at least ``remember_s`` seconds (at minute
resolution: at most two minutes longer) after the name was last served; a slot is reused
before that only when both of a name's buckets are full of younger entries, which with
two choices at this load does not happen while at most ``remember_names`` names were
served within ``remember_s`` (the fullest bucket holds about 7 of 8 for 500,000 names
drawn at random). Then the oldest entry of the two buckets gives way. The table's size
is fixed when it is created: a change of ``cache.remember_names`` takes effect on
restart; ``cache.remember_s`` on reload. Measured with 500,000 names: the process's
resident memory grows by 7.6 MiB; ``remember`` takes about 6 µs for a new name (a
process's own table; the shared one adds its lock) and ``where`` 3 µs, both only on a
name-cache miss, never on the hot path. A name ``where`` just found (a cold lookup asks
``where`` as it starts) is remembered again by rewriting the one word it found, if that
word is still there: ``where`` and ``remember`` together take about 4 µs then.

A hash collision (another name with the same buckets and 35-bit tag: about 10^-9 per
lookup of a name never served) can only make a name look remembered on a wrong mount:
at worst a 503 while that mount is down, never a wrong file. The minute stamp wraps
after about two years; an entry left untouched that long may count as recent again,
with the same worst case.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import math
import mmap
import os
import time
from collections.abc import Iterable, Iterator
from typing import Final

log = logging.getLogger("vend.memory")

FILE_NAME: Final = "vend-names"
"""The shared table's file, in the metrics directory."""
SLOTS: Final = 8
"""Slots in a bucket (8 x 8 bytes: one cache line)."""
HEADER_BYTES: Final = 4096
MAX_IDS: Final = 255
_MAGIC: Final = int.from_bytes(b"VENDMEM1", "little")
_REGISTRY: Final = 2
"""Index of the first registry word (id 1) in the header."""
_VALID: Final = 1 << 63
_STAMP_SHIFT: Final = 43
_STAMP_MASK: Final = (1 << 20) - 1
_ID_SHIFT: Final = 35
_ID_MASK: Final = 0xFF
_TAG_MASK: Final = (1 << 35) - 1
_RETIRED: Final = 1 << 63
_KEY_MASK: Final = (1 << 63) - 1
MAX_FOUND: Final = 4096
"""Most names ``where`` keeps the found word of for ``remember`` (``NameMemory``)."""


@functools.lru_cache(maxsize=4096)
def _name_hash(name: str) -> tuple[int, int, int]:
    """The name's two bucket numbers (before the modulo) and its tag.

    Kept for the last 4,096 names: a cold lookup asks ``where`` as it starts and
    ``remember`` (or ``forget``) when its verdict comes, a few ms later.
    """
    h = int.from_bytes(
        hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).digest(),
        "little",
    )
    return h & 0xFFFFFFFF, (h >> 32) & 0xFFFFFFFF, (h >> 64) & _TAG_MASK


@functools.lru_cache(maxsize=256)
def _key_hash(key: str) -> int:
    """A mount key's registry word: 63 bits of its hash, never 0."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & _KEY_MASK) or 1


def _minute(now: float) -> int:
    return int(now // 60) & _STAMP_MASK


def table_bytes(max_names: int) -> int:
    """Size of a table for ``max_names`` names, in bytes (header included)."""
    return HEADER_BYTES + _buckets_for(max_names) * SLOTS * 8


def _buckets_for(max_names: int) -> int:
    return max(2, math.ceil(2 * max_names / SLOTS))


class NameMemory:
    """Which mount (by key: its real configured path) last served each name.

    Args:
        max_names: names kept for sure (sizes the table when it is created).
        ttl_s: how long a name is kept after it was last served, in seconds.
        directory: where the shared table lives (``vend serve --workers N``), or None
            for a table of this process only.

    Raises:
        OSError: the shared table cannot be created or mapped.
    """

    def __init__(self, *, max_names: int, ttl_s: float, directory: str | None = None) -> None:
        self.max_names = max_names
        self.ttl_s = ttl_s
        self._fd: int | None = None
        if directory is None:
            self._buckets = _buckets_for(max_names)
            self._map = mmap.mmap(-1, table_bytes(max_names))
            self._words = memoryview(self._map).cast("Q")
            self._words[0] = _MAGIC
            self._words[1] = self._buckets
        else:
            self._open_shared(os.path.join(directory, FILE_NAME))
        self._ids: dict[str, int] = {}
        """Configured mount keys and their ids (checked against the registry on use)."""
        self._keys: dict[int, str] = {}
        """Registry word of each configured mount, to its key."""
        self._found: dict[str, tuple[int, int]] = {}
        """Names ``where`` found lately, each with the index and value of its word: a
        cold lookup asks ``where`` as it starts and ``remember`` when its verdict comes,
        a few ms later, and ``remember`` then rewrites that one word (if it is still
        there) instead of reading and scanning both buckets again. At most
        ``MAX_FOUND`` names; emptied when full."""

    def _open_shared(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(fd).st_size
                header = os.pread(fd, 16, 0) if size >= HEADER_BYTES else b""
                fresh = len(header) < 16 or int.from_bytes(header[:8], "little") != _MAGIC
                buckets = (
                    _buckets_for(self.max_names) if fresh else int.from_bytes(header[8:], "little")
                )
                if fresh:
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, HEADER_BYTES + buckets * SLOTS * 8)
                self._map = mmap.mmap(fd, HEADER_BYTES + buckets * SLOTS * 8)
                self._words = memoryview(self._map).cast("Q")
                if fresh:
                    self._words[1] = buckets
                    self._words[0] = _MAGIC
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._buckets = buckets
        if buckets != _buckets_for(self.max_names):
            log.warning("cache.remember_names: the shared table's size changes on restart")

    @property
    def size_bytes(self) -> int:
        """The table's size, in bytes (shared by every worker)."""
        return len(self._map)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the table's write lock (a shared table only; readers never lock)."""
        if self._fd is None:
            yield
            return
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Unmap the table (this process's view; the shared file stays)."""
        self._words.release()
        self._map.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __len__(self) -> int:
        """Entries held now (valid and recent), by a scan of the whole table."""
        return self.count()

    def count(self, now: float | None = None) -> int:
        """Entries held (valid and recent) at ``now`` (``time.monotonic()``, seconds, or
        None: now), by a scan of the whole table."""
        words = self._words
        minute = _minute(time.monotonic() if now is None else now)
        return sum(
            1 for w in words[HEADER_BYTES // 8 :].tolist() if w & _VALID and self._fresh(w, minute)
        )

    def _fresh(self, word: int, now_minute: int) -> bool:
        age = (now_minute - ((word >> _STAMP_SHIFT) & _STAMP_MASK)) & _STAMP_MASK
        return age * 60 < self.ttl_s + 60

    def configure(self, limits: tuple[int, float], mount_keys: Iterable[str]) -> None:
        """Adopt new limits and the mounts now configured (at start and on reload).

        Args:
            limits: ``(max_names, ttl_s)``; ``max_names`` applies to a table created
                later (the table's size is fixed).
            mount_keys: keys of the configured mounts; entries of any other mount are
                forgotten (its id is retired and never given out again).
        """
        max_names, self.ttl_s = limits
        if max_names != self.max_names:
            log.warning("cache.remember_names changes on restart")
        keys = list(dict.fromkeys(mount_keys))
        hashes = {_key_hash(k): k for k in keys}
        with self._writing():
            registry = self._registry()
            for slot, word in registry.items():
                if not word & _RETIRED and word not in hashes:
                    self._words[_REGISTRY + slot - 1] = word | _RETIRED
            self._ids = {}
            for key in keys:
                self._ids[key] = self._register(_key_hash(key))
        self._keys = hashes

    def _registry(self) -> dict[int, int]:
        """Registry words in use, by id."""
        words = self._words
        return {i: w for i in range(1, MAX_IDS + 1) if (w := words[_REGISTRY + i - 1])}

    def _register(self, key_word: int) -> int:
        """The id of a mount (registered if new); the caller holds the write lock."""
        registry = self._registry()
        for slot, word in registry.items():
            if word == key_word:
                return slot
        if len(registry) >= MAX_IDS:
            log.warning("all %d mount ids used: the memory of where names live restarts", MAX_IDS)
            self._words[_REGISTRY : _REGISTRY + MAX_IDS] = memoryview(bytes(8 * MAX_IDS)).cast("Q")
            self._map[HEADER_BYTES:] = bytes(len(self._map) - HEADER_BYTES)
            registry = {}
        slot = next(i for i in range(1, MAX_IDS + 1) if i not in registry)
        self._words[_REGISTRY + slot - 1] = key_word
        return slot

    def _id_of(self, mount_key: str) -> int | None:
        """The mount's current id (re-registered if the table restarted); lock held."""
        slot = self._ids.get(mount_key)
        if slot is None:
            return None  # not configured (a request from before a reload): not kept
        key_word = _key_hash(mount_key)
        if self._words[_REGISTRY + slot - 1] != key_word:
            slot = self._ids[mount_key] = self._register(key_word)
        return slot

    def _slots(self, name: str) -> tuple[range, range, int]:
        first, second, tag = _name_hash(name)
        base = HEADER_BYTES // 8
        a = base + (first % self._buckets) * SLOTS
        b = base + (second % self._buckets) * SLOTS
        return range(a, a + SLOTS), range(b, b + SLOTS), tag

    def _held(self, one: range, two: range) -> tuple[int, ...]:
        """The words of a name's two buckets, ``one`` then ``two``, as read now."""
        words = self._words
        return (*words[one.start : one.stop].tolist(), *words[two.start : two.stop].tolist())

    def where(self, name: str, now: float | None = None) -> str | None:
        """The key of the mount that last served ``name``, or None when not remembered.

        Lock-free: reads at most 16 words.

        Args:
            name: the request name.
            now: ``time.monotonic()``, in seconds (None: now).
        """
        one, two, tag = self._slots(name)
        words = self._words
        minute = _minute(time.monotonic() if now is None else now)
        for position, word in enumerate(self._held(one, two)):
            if word & _TAG_MASK == tag and word & _VALID and self._fresh(word, minute):
                slot = (word >> _ID_SHIFT) & _ID_MASK
                if not slot:
                    return None
                found = self._found
                if len(found) >= MAX_FOUND:
                    found.clear()
                found[name] = (
                    one.start + position if position < SLOTS else two.start + position - SLOTS,
                    word,
                )
                return self._keys.get(words[_REGISTRY + slot - 1])
        return None

    def remember(self, name: str, mount_key: str, now: float | None = None) -> None:
        """Note that ``mount_key``'s mount served ``name``.

        Writes (under the lock) only when the entry changes: a new name, another
        mount, or a new minute.

        Args:
            name: the request name.
            mount_key: the serving mount's key.
            now: ``time.monotonic()``, in seconds (None: now).
        """
        slot = self._ids.get(mount_key)
        seen = self._found.pop(name, None)
        if slot is None:
            return  # not configured (a request from before a reload): not kept
        minute = _minute(time.monotonic() if now is None else now)
        if seen is not None and self._rewrite(seen, slot, minute, mount_key):
            return
        one, two, tag = self._slots(name)
        wanted = _VALID | minute << _STAMP_SHIFT | slot << _ID_SHIFT | tag
        if self._words[_REGISTRY + slot - 1] == _key_hash(mount_key) and wanted in self._held(
            one, two
        ):
            return  # known, this minute (a second copy of the name cannot be newer)
        if self._fd is None:
            self._store(one, two, tag, minute, mount_key)
            return
        with self._writing():
            self._store(one, two, tag, minute, mount_key)

    def _rewrite(self, seen: tuple[int, int], slot: int, minute: int, mount_key: str) -> bool:
        """Give the word ``where`` found its new minute, when it still holds the name on
        this mount (id ``slot``, still registered to ``mount_key``).

        Returns:
            True when the entry is up to date now; False when the word changed since
            (another name took the slot, another worker wrote it, the table restarted)
            or names another mount: ``remember`` goes the whole way then.
        """
        index, word = seen
        words = self._words
        if (word >> _ID_SHIFT) & _ID_MASK != slot:
            return False
        if words[_REGISTRY + slot - 1] != _key_hash(mount_key):
            return False
        wanted = (word & ~(_STAMP_MASK << _STAMP_SHIFT)) | minute << _STAMP_SHIFT
        if self._fd is None:  # a process's own table: no lock to take
            return self._swap(index, word, wanted)
        with self._writing():
            return self._swap(index, word, wanted)

    def _swap(self, index: int, word: int, wanted: int) -> bool:
        """Write ``wanted`` at ``index`` if it still holds ``word`` (lock held, if any);
        False when it no longer does."""
        words = self._words
        if words[index] != word:
            return False
        if wanted != word:
            words[index] = wanted
        return True

    def _store(self, one: range, two: range, tag: int, minute: int, mount_key: str) -> None:
        """Write a name's entry (the caller holds the write lock), in one pass over its
        two buckets: its own slot if it has one (a second copy, from before a table
        restart, is cleared), else the first empty or expired slot of the emptier
        bucket, else the oldest slot of both."""
        mount_id = self._id_of(mount_key)
        if mount_id is None:
            return
        words = self._words
        fresh_s = self.ttl_s + 60
        target = oldest = -1
        oldest_age = -1
        free = [0, 0]  # per bucket: empty or expired slots, and the first of them
        first = [-1, -1]
        for side, bucket in enumerate((one, two)):
            for index in bucket:
                word = words[index]
                if word & _VALID:
                    if word & _TAG_MASK == tag:
                        if target < 0:
                            target = index
                        elif index != target:  # both buckets may be the same one
                            words[index] = 0
                        continue
                    age = (minute - ((word >> _STAMP_SHIFT) & _STAMP_MASK)) & _STAMP_MASK
                    if age * 60 < fresh_s:  # as ``_fresh``
                        if age > oldest_age:
                            oldest, oldest_age = index, age
                        continue
                free[side] += 1
                if first[side] < 0:
                    first[side] = index
        if target < 0:
            if free[0] or free[1]:
                target = first[0] if free[0] >= free[1] else first[1]
            else:
                target = oldest
        words[target] = _VALID | minute << _STAMP_SHIFT | mount_id << _ID_SHIFT | tag

    def forget(self, name: str) -> None:
        """Forget ``name`` (no mount holds it any more)."""
        self._found.pop(name, None)
        one, two, tag = self._slots(name)
        words = self._words
        if not any(word & _TAG_MASK == tag and word & _VALID for word in self._held(one, two)):
            return
        with self._writing():
            for index in (*one, *two):
                if words[index] & _TAG_MASK == tag and words[index] & _VALID:
                    words[index] = 0
