"""The memory of where names live: which mount last served each name.

``down_mount_policy = "unavailable"`` needs it: a name known to live on a mount that is
down (or overdue) must get 503, never an older copy from a later mount. It is consulted
only for that, and to start a lookup on the mounts up to the remembered one first
(``app.federation.lookup``); it never makes vend skip a healthy mount.

Bounds. Names are kept in two generations, each a dict from the name's 64-bit hash to a
small mount number. New names go to the current generation; when it holds
``max_names`` names or is ``ttl_s`` seconds old it becomes the previous generation and
the old previous one is dropped. A name found in the previous generation moves back to
the current one. So a name served within the last ``ttl_s`` seconds is remembered unless
``max_names`` other names were served after it, and at most ``2 x max_names`` are held.
Measured with tracemalloc (``tests/unit/test_memory.py``): about 80 bytes a name, so
the default 500,000 names per generation take at most about 80 MiB.

A hash collision (two names with the same 64-bit hash, odds about 10^-8 among a million
names) can only make a name look remembered on the wrong mount: at worst a 503 while
that mount is down, never a wrong file.

It lives in the worker process, outside the settings: a reload (SIGHUP) keeps it, and
only entries of mounts no longer configured are dropped (their numbers are retired, so
the entries read as unknown). A restart loses it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable


class NameMemory:
    """Which mount (by key: its real configured path) last served each name.

    Args:
        max_names: names per generation (see the module docstring).
        ttl_s: age of a generation before it is retired, in seconds.
    """

    def __init__(self, *, max_names: int, ttl_s: float) -> None:
        self.max_names = max_names
        self.ttl_s = ttl_s
        self._current: dict[int, int] = {}
        self._previous: dict[int, int] = {}
        self._started = time.monotonic()
        self._numbers: dict[str, int] = {}
        self._keys: dict[int, str] = {}
        self._next_number = 0

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def configure(self, limits: tuple[int, float], mount_keys: Iterable[str]) -> None:
        """Adopt new limits and the mounts now configured (at start and on reload).

        Args:
            limits: ``(max_names, ttl_s)``.
            mount_keys: keys of the configured mounts; entries of any other mount are
                forgotten (their number is retired and never given out again).
        """
        self.max_names, self.ttl_s = limits
        keep = set(mount_keys)
        for key in [k for k in self._numbers if k not in keep]:
            del self._keys[self._numbers.pop(key)]

    def _number(self, mount_key: str) -> int:
        number = self._numbers.get(mount_key)
        if number is None:
            number = self._numbers[mount_key] = self._next_number
            self._keys[number] = mount_key
            self._next_number += 1
        return number

    def _rotate_if_due(self, now: float) -> None:
        if len(self._current) >= self.max_names or now - self._started >= self.ttl_s:
            self._previous = self._current
            self._current = {}
            self._started = now

    def remember(self, name: str, mount_key: str, now: float | None = None) -> None:
        """Note that ``mount_key``'s mount served ``name``.

        Args:
            name: the request name.
            mount_key: the serving mount's key.
            now: ``time.monotonic()``, in seconds (None: now).
        """
        self._rotate_if_due(time.monotonic() if now is None else now)
        h = hash(name)
        self._previous.pop(h, None)
        self._current[h] = self._number(mount_key)

    def forget(self, name: str) -> None:
        """Forget ``name`` (no mount holds it any more)."""
        h = hash(name)
        self._current.pop(h, None)
        self._previous.pop(h, None)

    def where(self, name: str, now: float | None = None) -> str | None:
        """The key of the mount that last served ``name``, or None when not remembered.

        Args:
            name: the request name.
            now: ``time.monotonic()``, in seconds (None: now).
        """
        h = hash(name)
        number = self._current.get(h)
        if number is None:
            number = self._previous.pop(h, None)
            if number is None:
                return None
            self._rotate_if_due(time.monotonic() if now is None else now)
            self._current[h] = number
        return self._keys.get(number)
