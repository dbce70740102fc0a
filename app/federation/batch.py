"""Lookups gathered per mount: one thread hand-off per mount per turn of the event loop.

A request whose name the cache does not hold asks the mounts it must ask
(``app.federation.lookup``). A hand-off to a mount's thread and back costs about 170 µs
of the core here, and a name's own filesystem work (open, fstat, a small read) a few µs;
paid per request and per mount, the hand-offs were nearly all of a cold request's cost.
So the asks made on a mount in one turn of the event loop are gathered into a *batch*:
one call in the mount's own threads looks them all up, one after the other, each with
the same race-free open as before (``app.federation.open.open_in_mount``), and the
answers come back to the loop in one call. A mount whose names take long (a slow NFS
server) gets its batch split over its threads, so they still work in parallel.

What holds for each name as it did for a lookup of its own (``Mount.call``):

- its run time counts against ``fs_op_s`` and the mount's lookup deadline: the batch
  records when its current name started, and the mount's pace (``app.federation.pace``)
  sees that and each name finished, so a mount working through a batch is not overdue
  and a hung one is;
- ESTALE is retried once, in the thread; any other error answers that name alone, and
  the errors that say the mount is in trouble open its breaker (``Mount.count_error``);
- a batch that waits longer than ``QUEUE_FACTOR`` x ``fs_op_s`` for a thread is
  cancelled and its names answered ``EAGAIN``; one whose current name runs ``fs_op_s``
  marks the mount down (``ETIMEDOUT``), its names not answered yet get ``ETIMEDOUT``, it
  looks no further name up, and what it opened meanwhile is closed when it returns;
- a mount that is down answers at once (its last error); a mount not probed yet, or
  overdue (one scout at a time), is asked the single-call way (``Mount.lookup``).

The event loop itself never makes a filesystem call.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Final, Protocol

from app.federation.open import (
    Holder,
    Lookup,
    MountUnavailable,
    OpenFile,
    SmallFile,
    open_in_mount,
)
from app.federation.pace import GATE_POLL_S, Pace, RunWatch
from app.federation.threads import PoolFull

log = logging.getLogger("vend.mounts")

SLOW_NAME_S: Final = 0.05
"""A name whose lookup takes longer than this in a thread (seconds) is slow: the rest of
its batch is shared out over the mount's threads. A fast name takes tens of µs, but on a
busy core each of its ~10 calls may wait up to the interpreter's switch interval (5 ms)
for the lock: at 10 ms, fast mounts under load looked slow, shared every batch over
eight threads, and those threads' contention for the lock kept them slow (the long-tail
benchmark ran at half the rate). A slow NFS server's name takes 100s of ms.)"""
SLOW_JOB_S: Final = 0.25
"""A job that has run this long (seconds) shares the rest of its batch out too (50 ms
tripped on a fast mount's batch of a few hundred names on a busy core)."""
HOLD_S: Final = 0.02
"""Longest new asks wait for the mount's running batch to end before they go in a batch
of their own, in seconds after that batch was submitted (``AskQueue``)."""

Found = OpenFile | SmallFile | Lookup


class BatchMount(Holder, Protocol):
    """What a batch needs of its mount (``app.federation.mount.Mount`` is one): where
    it is, its threads and pace, and its breaker and metrics (see the ``Mount``
    attributes and methods of the same names)."""

    @property
    def real_root(self) -> str | None: ...

    @property
    def root_mount_id(self) -> int | None: ...

    @property
    def up(self) -> bool: ...

    @property
    def threads(self) -> int: ...

    @property
    def pace(self) -> Pace: ...

    @property
    def name_s(self) -> float: ...

    @property
    def queue_timeout_s(self) -> float: ...

    def is_late(self, running_s: float, now: float) -> bool: ...

    def mark_down(self, error: str) -> None: ...

    def unavailable(self, error: str) -> MountUnavailable: ...

    def count_error(self, code: int | None, where: str = "lookup") -> MountUnavailable: ...

    def note_batch(self, longest_s: float) -> None: ...

    def observe(self, outcome: str, started: float, count: int = 1) -> None: ...


class Ask:
    """One request's lookup on one mount, answered by a batch (or a single call).

    Attributes:
        candidates: names to try on the mount, in order (a name, or index names).
        directories: a directory is an answer (``Lookup.DIRECTORY``) rather than absent.
        max_read_bytes: files of at most this size are read whole, in bytes (0: never).
        on_answer: called on the event loop once ``outcome`` is set, or None.
        outcome: the answer (an open or small file, a ``Lookup``, or the
            ``MountUnavailable`` the mount failed with), None until answered.
        batch: the batch it went in, once submitted.
        dropped: nobody wants the answer any more (the request went away or was
            answered): an open file it brings is closed.
        task: the single-call lookup answering it instead of a batch (a mount not
            probed yet, or overdue), or None.
        watch: how long that lookup's current call has run, or None.
    """

    __slots__ = (
        "batch",
        "candidates",
        "directories",
        "dropped",
        "max_read_bytes",
        "on_answer",
        "outcome",
        "task",
        "watch",
    )

    def __init__(
        self,
        candidates: Sequence[str],
        directories: bool,
        max_read_bytes: int,
        on_answer: Callable[[], object] | None,
    ) -> None:
        self.candidates = candidates
        self.directories = directories
        self.max_read_bytes = max_read_bytes
        self.on_answer = on_answer
        self.outcome: Found | MountUnavailable | None = None
        self.batch: Batch | None = None
        self.dropped = False
        self.task: asyncio.Future[None] | None = None
        self.watch: RunWatch | None = None

    def running_s(self, now: float) -> float:
        """How long the mount's call holding this ask has run on its current name, in
        seconds at ``now`` (``time.monotonic()``); 0 while queued or answered."""
        if self.outcome is not None:
            return 0.0
        if self.watch is not None:
            return self.watch.running_s(now)
        return 0.0 if self.batch is None else self.batch.running_s(now)

    def answer(self, outcome: Found | MountUnavailable) -> None:
        """Set the outcome and tell ``on_answer``; a dropped ask's open file is closed."""
        self.outcome = outcome
        if self.dropped:
            if isinstance(outcome, OpenFile):
                outcome.close()
            return
        if self.on_answer is not None:
            self.on_answer()

    def drop(self) -> None:
        """Nobody wants the answer: close the open file it brought or will bring."""
        self.dropped = True
        if isinstance(self.outcome, OpenFile):
            self.outcome.close()
        elif self.task is not None and not self.task.done():
            self.task.cancel()  # the single call closes what it opens late


def _look_up_one(root: str, ask: Ask, mount: BatchMount, root_mount_id: int | None) -> Found | int:
    """The first of the ask's candidates the mount holds, as ``Mount.lookup`` finds it."""
    for attempt in (1, 2):
        try:
            for name in ask.candidates:
                found = open_in_mount(root, name, mount, ask.max_read_bytes, root_mount_id)
                if found is Lookup.DIRECTORY and not ask.directories:
                    continue
                if found is not Lookup.ABSENT:
                    return found
            return Lookup.ABSENT
        except OSError as exc:
            if exc.errno == errno.ESTALE and attempt == 1:
                continue  # a stale NFS file handle: the path is looked up anew
            return exc.errno or errno.EIO
    raise AssertionError("unreachable")


class Batch:
    """Asks on one mount, looked up by calls in its threads that share them out.

    One call (a *job*) takes the asks one after the other. When its names take long
    (more than ``JOB_S`` since it started), it hands a helper job to the pool, up to the
    mount's thread count, and the helpers take asks from the same list: a fast mount
    answers a batch in one call, a slow one in parallel. The last job to end hands the
    answers to the loop (``_complete``).

    Args:
        mount: the mount.
        asks: its asks.
        queue: the queue it came from, told when it ends (``AskQueue.batch_done``).

    Attributes:
        future: the first job's future in the mount's pool, once submitted.
        submitted: ``time.monotonic()`` at submission, in seconds.
        abandoned: a name ran past ``fs_op_s`` (or the first job was cancelled): its
            asks are answered already, no job takes another, and what was opened is
            closed.
        longest_s: the longest any one name took in a thread, in seconds.
        durations: how long each name looked up took in a thread, in seconds.
        results: per ask, what its lookup found (see ``_look_up_one``), None until then.
    """

    __slots__ = (
        "_jobs",
        "_lock",
        "_loop",
        "_next",
        "_over",
        "_queue",
        "_shared",
        "_starts",
        "abandoned",
        "asks",
        "durations",
        "future",
        "longest_s",
        "mount",
        "results",
        "submitted",
        "timer",
    )

    def __init__(self, mount: BatchMount, asks: list[Ask], queue: AskQueue | None = None) -> None:
        self.mount = mount
        self.asks = asks
        self._queue = queue
        self.results: list[Found | int | None] = [None] * len(asks)
        self.future: Future[None] | None = None
        self.submitted = 0.0
        self.abandoned = False
        self.longest_s = 0.0
        self.durations: list[float] = []
        self.timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._next = itertools.count()  # next(): atomic, so jobs never take one ask twice
        self._jobs = 0
        self._over = False
        self._shared = False
        self._starts: list[float | None] = []  # per job: when its current name started

    @property
    def started_at(self) -> float | None:
        """When the oldest name now being looked up started (``time.monotonic()``,
        seconds), or None while none is (the pace's view, ``Pace.start``)."""
        oldest = None
        for started in self._starts:  # one per job: usually one
            if started is not None and (oldest is None or started < oldest):
                oldest = started
        return oldest

    def done(self) -> bool:
        """True once every job has ended."""
        return self._over

    def running_s(self, now: float) -> float:
        """How long the oldest name now being looked up has run, in seconds (0: none)."""
        started = self.started_at
        return 0.0 if started is None else now - started

    def submit(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand the asks to the mount's pool; answer them at once if it cannot take them."""
        mount = self.mount
        for ask in self.asks:
            ask.batch = self
        self._loop = loop
        try:
            future = mount.executor.submit(self._job)
        except (PoolFull, RuntimeError):  # RuntimeError: shut down (a reload removed it)
            self._fail(mount.unavailable("EAGAIN"), "error")
            return
        self.future = future
        self.submitted = time.monotonic()
        mount.pace.start(self)
        future.add_done_callback(self._if_cancelled)
        if len(self.asks) > 1 and mount.name_s > SLOW_NAME_S:  # slow lately: share out now
            self._add_helpers(len(self.asks) - 1)
        self.timer = loop.call_later(mount.pace.deadline_s(), self._tick)

    def _job(self) -> None:
        """One job, in a mount thread: take asks and look them up until none is left."""
        with self._lock:
            if self._over:
                return  # a helper that started after the others ended
            slot = self._jobs
            self._jobs += 1
            self._starts.append(None)
        mount, asks, results = self.mount, self.asks, self.results
        root = mount.real_root
        mount_id = mount.root_mount_id if mount.settings.require_mountpoint else None
        pace, starts = mount.pace, self._starts
        began = time.monotonic()
        helpers = len(asks) > 1 and slot == 0 and not self._shared
        try:
            while not self.abandoned and root is not None:
                i = next(self._next)
                if i >= len(asks):
                    break
                ask = asks[i]
                if ask.dropped:
                    continue
                started = starts[slot] = time.monotonic()
                results[i] = _look_up_one(root, ask, mount, mount_id)
                done = time.monotonic()
                starts[slot] = None
                self.longest_s = max(self.longest_s, done - started)
                self.durations.append(done - started)
                pace.progress(done)
                if helpers and (done - started > SLOW_NAME_S or done - began > SLOW_JOB_S):
                    helpers = False  # slow names: share the rest out over the threads
                    self._add_helpers(len(asks) - i - 1)
        finally:
            with self._lock:
                starts[slot] = None
                self._jobs -= 1
                last = self._jobs == 0
                if last:
                    self._over = True
            if last and self._loop is not None:
                _call_soon_threadsafe(self._loop, self._complete)

    def _add_helpers(self, left: int) -> None:
        """Queue helper jobs for the ``left`` asks not taken yet (once per batch)."""
        self._shared = True
        mount = self.mount
        for _ in range(min(left, mount.threads - 1)):
            try:
                mount.executor.submit(self._job)
            except (PoolFull, RuntimeError):
                return

    def _if_cancelled(self, future: Future[None]) -> None:
        """Done-callback of the first job: one cancelled while queued never runs."""
        if future.cancelled() and self._loop is not None:
            self._over = True
            _call_soon_threadsafe(self._loop, self._complete)

    def _fail(self, error: MountUnavailable, outcome: str) -> None:
        """Answer every ask not answered yet with ``error`` (observed as ``outcome``)."""
        mount = self.mount
        started = self.submitted or time.monotonic()
        waiting = [ask for ask in self.asks if ask.outcome is None]
        mount.observe(outcome, started, len(waiting))
        for ask in waiting:
            ask.answer(error)

    def _complete(self) -> None:
        """On the loop, once every job ended: answer each ask (one hand-off back)."""
        try:
            self._answer_all()
        finally:
            if self._queue is not None:
                self._queue.batch_done(self)
            # Its asks, timer and future point back at it: once it is over, part them, so
            # the batch and what its asks hold are freed at once, not by the collector
            # (thousands of batches and asks a second on a long tail).
            for ask in self.asks:
                ask.batch = None
            self.timer = self.future = None

    def _answer_all(self) -> None:
        """Answer each ask from what the jobs found (see ``_complete``)."""
        mount = self.mount
        if self.timer is not None:
            self.timer.cancel()
        future = self.future
        cancelled = future is not None and future.cancelled()
        mount.pace.finish(self, () if cancelled else self.durations)
        if self.abandoned:  # answered ETIMEDOUT already: close what it opened
            for result in self.results:
                if isinstance(result, OpenFile):
                    result.close()
            return
        if cancelled:  # while queued: the mount went down (cancel_queued), or overload
            self.abandoned = True
            self._fail(mount.unavailable("EAGAIN"), "error")
            return
        mount.note_batch(self.longest_s)
        hits = misses = errors = 0
        for ask, result in zip(self.asks, self.results, strict=True):
            if result is None:  # dropped before its turn
                ask.answer(Lookup.ABSENT)
            elif isinstance(result, int):
                errors += 1
                ask.answer(mount.count_error(result))
            else:
                if isinstance(result, Lookup):
                    misses += 1
                else:
                    hits += 1  # an open or a small file
                ask.answer(result)
        started = self.submitted
        mount.observe("hit", started, hits)
        mount.observe("miss", started, misses)
        mount.observe("error", started, errors)

    def _tick(self) -> None:
        """While jobs run: time the queue wait and the current names' run."""
        if self._over or self.abandoned:
            return
        mount = self.mount
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        started = self.started_at
        running = 0.0
        if started is None:
            future = self.future
            if (
                future is not None
                and now - self.submitted >= mount.queue_timeout_s
                and future.cancel()  # only while still queued
            ):
                return  # _if_cancelled answers the asks
        else:
            running = now - started
            if running >= mount.fs_op_s:
                mount.mark_down("ETIMEDOUT")
                self.abandoned = True
                self._fail(mount.unavailable("ETIMEDOUT"), "timeout")
                return
        if mount.is_late(running, now):  # their searches may take a later mount's answer
            for ask in self.asks:
                if ask.outcome is None and not ask.dropped and ask.on_answer is not None:
                    ask.on_answer()
        wait = GATE_POLL_S if started is None else max(0.01, mount.fs_op_s - running)
        self.timer = loop.call_later(min(GATE_POLL_S, wait), self._tick)


def _call_soon_threadsafe(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    """Schedule ``callback`` on ``loop`` from any thread; nothing once the loop closed."""
    with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits for the answers
        loop.call_soon_threadsafe(callback)


class AskQueue:
    """The asks made on one mount, gathered into batches.

    While no batch of the mount's runs, the asks made in one turn of the event loop go
    into one batch, submitted at the loop's next turn. While one runs, the new asks wait
    for it to end (``batch_done``) and then go together: under load a batch carries
    every ask made while the previous one ran, so the hand-offs per request shrink as
    the requests grow, and the mount's threads are not woken once per turn. They wait at
    most ``HOLD_S`` after the running batch was submitted: a slow or hung mount's next
    batch is not held back by it.

    Args:
        mount: the mount.
    """

    __slots__ = ("_loop", "_pending", "_running", "_timer", "mount")

    def __init__(self, mount: BatchMount) -> None:
        self.mount = mount
        self._pending: list[Ask] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: Batch | None = None
        self._timer: asyncio.TimerHandle | None = None

    def add(self, ask: Ask) -> None:
        """Queue ``ask`` for the next batch (see the class docstring)."""
        if not self._pending:
            loop = self._loop = asyncio.get_running_loop()
            running = self._running
            wait = 0.0 if running is None else running.submitted + HOLD_S - time.monotonic()
            if wait <= 0:
                loop.call_soon(self._flush)
            else:
                self._timer = loop.call_later(wait, self._flush)
        self._pending.append(ask)

    def batch_done(self, batch: Batch) -> None:
        """A batch ended (on the loop): submit the asks that waited for it."""
        if batch is not self._running:
            return
        self._running = None
        if self._pending:
            self._flush()

    def _flush(self) -> None:
        """Submit the asks gathered as one batch."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        asks, self._pending = [a for a in self._pending if not a.dropped], []
        loop = self._loop
        if not asks or loop is None:
            return
        mount = self.mount
        if not mount.up or mount.real_root is None:  # went down since the asks came
            error = mount.unavailable("EIO")
            mount.observe("skipped", time.monotonic(), len(asks))
            for ask in asks:
                ask.answer(error)
            return
        batch = Batch(mount, asks, self)
        batch.submit(loop)
        if batch.future is not None and not batch.done():
            self._running = batch
