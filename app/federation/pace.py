"""A mount's pace: its observed latency, its lookup deadline, and when it is overdue.

``timeouts.fs_op_s`` (5 s by default) is how long one operation may *run* before the
mount is declared down; waiting that long before looking at the other mounts would make
every client wait it out. So each mount also has a *lookup deadline*, derived from its
own recent latency::

    deadline = clamp(FACTOR x p90(last WINDOW operations), FLOOR_S, fs_op_s x CEILING_SHARE)

A mount whose latency is 1 ms gets the floor (0.2 s); one that answers in 300 ms per
operation (a lookup of about 2.4 s) gets the ceiling, 4 s at the default ``fs_op_s``. A lookup still
running past its deadline is *overdue*: later mounts' answers may be used meanwhile
(``app.federation.lookup``). The mount itself is *overdue* while its oldest running
operation is past the deadline and no operation has finished within the deadline: a slow
mount keeps finishing operations and so is never overdue for long, a hung one finishes
none. Overdue is not down: the breaker opens only when an operation runs ``fs_op_s``.

The bookkeeping is fed from the mount's threads (a future's done-callback) and read on
the event loop; each update is one atomic container operation under the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Final

FLOOR_S: Final = 0.2
"""Shortest lookup deadline, in seconds: below it, scheduling noise on a busy host would
make healthy mounts look overdue."""
CEILING_SHARE: Final = 0.8
"""Longest lookup deadline, as a share of ``fs_op_s``: a mount is overdue before it is
down, whatever its latency. A lookup is about 8 filesystem operations (a hit on a small
file: lookup, 4 getattr, open, 2 reads), 2.4 s at 300 ms each: within 0.8 x 5 s."""
FACTOR: Final = 4.0
"""The deadline is this many times the mount's recent 90th-percentile latency."""
WINDOW: Final = 64
"""Operations whose durations make up the recent latency."""
QUEUE_FACTOR: Final = 3
"""A call may wait this many times ``fs_op_s`` for a free thread of its mount."""
GATE_POLL_S: Final = 0.25
"""While a mount is overdue, waiting calls look again at least this often, in seconds."""


class Pace:
    """Latency and operations in flight of one mount.

    Args:
        fs_op_s: the mount's operation timeout, in seconds (bounds the ceiling; longer
            operations are not counted as latency, they are failures).
    """

    def __init__(self, fs_op_s: float) -> None:
        self.fs_op_s = fs_op_s
        self.ceiling_s = max(FLOOR_S, fs_op_s * CEILING_SHARE)
        self._durations: deque[float] = deque(maxlen=WINDOW)
        self._in_flight: dict[int, Any] = {}
        self._last_done = time.monotonic()
        self._deadline_s = FLOOR_S
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    @property
    def in_flight(self) -> int:
        """Operations submitted and not finished (queued or running)."""
        return len(self._in_flight)

    def deadline_s(self) -> float:
        """The lookup deadline now, in seconds (see the module docstring)."""
        return self._deadline_s

    def track(self, future: Future[Any]) -> None:
        """Count ``future`` (just submitted to the mount's pool) until it finishes.

        Call on the event loop; the future's start time is read from ``started_at``
        (set by ``DaemonPool`` when a thread takes it).
        """
        self.start(future)
        future.add_done_callback(self._finished)

    def start(self, operation: Any) -> None:
        """Count ``operation`` as in flight until ``finish`` is called for it (on the loop).

        Args:
            operation: anything with a ``done()`` method and a ``started_at`` attribute
                (``time.monotonic()`` when its current step started, None while none
                runs): a future, or a batch of names (``app.federation.batch``), which
                sets ``started_at`` for each name and calls ``progress`` after each, so
                that the mount's pace is a name's, not the batch's.
        """
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._in_flight[id(operation)] = operation

    def finish(self, operation: Any, durations_s: Sequence[float]) -> None:
        """On the loop: ``operation`` (counted by ``start``) is over; its steps took
        ``durations_s`` seconds each (none: it never ran)."""
        self._in_flight.pop(id(operation), None)
        kept = [d for d in durations_s if d < self.fs_op_s]
        if kept:
            self._durations.extend(kept)
            self._deadline_s = self._compute_deadline()
        self._wake()

    def progress(self, now: float) -> None:
        """An operation finished at ``now`` (``time.monotonic()``, seconds); any thread."""
        self._last_done = now

    def _finished(self, future: Future[Any]) -> None:
        """Done-callback (any thread): record the duration of a finished operation."""
        self._in_flight.pop(id(future), None)
        now = time.monotonic()
        started = getattr(future, "started_at", None)
        if started is not None and not future.cancelled():
            self._last_done = now
            duration = now - started
            if future.exception() is None and duration < self.fs_op_s:
                self._durations.append(duration)
                self._deadline_s = self._compute_deadline()
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(self._wake)

    def observe_s(self, duration_s: float) -> None:
        """Count a duration measured elsewhere (the probe), in seconds."""
        self._last_done = time.monotonic()
        if duration_s < self.fs_op_s:
            self._durations.append(duration_s)
            self._deadline_s = self._compute_deadline()

    def _compute_deadline(self) -> float:
        recent = sorted(self._durations)
        if not recent:
            return FLOOR_S
        p90 = recent[min(len(recent) - 1, (len(recent) * 9) // 10)]
        return min(self.ceiling_s, max(FLOOR_S, FACTOR * p90))

    def oldest_running_s(self, now: float) -> float:
        """How long the oldest operation now running has run, in seconds (0: none)."""
        oldest = 0.0
        for future in list(self._in_flight.values()):
            started = getattr(future, "started_at", None)
            if started is not None and not future.done():
                oldest = max(oldest, now - started)
        return oldest

    def is_overdue(self, now: float) -> bool:
        """True while an operation runs past the deadline and none finished within it."""
        if not self._in_flight:
            return False
        deadline = self._deadline_s
        return now - self._last_done > deadline and self.oldest_running_s(now) > deadline

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_changed(self, timeout_s: float) -> None:
        """Wait until an operation finishes, or ``timeout_s`` seconds (on the event loop)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)


class RunWatch:
    """How long one lookup's current filesystem call has been running.

    A lookup waiting for a free thread behind other work is not late (that is load); one
    whose call runs past the mount's deadline is.
    """

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: Future[Any] | None = None

    def bind(self, future: Future[Any]) -> None:
        """Watch ``future``, the call just submitted for this lookup."""
        self._future = future

    def bind_and(self, track: Callable[[Future[Any]], None]) -> Callable[[Future[Any]], None]:
        """An ``on_submit`` hook that binds the future here and passes it to ``track``."""

        def hook(future: Future[Any]) -> None:
            self._future = future
            track(future)

        return hook

    def running_s(self, now: float) -> float:
        """Seconds the current call has been running at ``now`` (0: none running)."""
        future = self._future
        started: float | None = None if future is None else getattr(future, "started_at", None)
        if started is None or future is None or future.done():
            return 0.0
        return now - started
