"""A mount's own bounded pool of daemon worker threads.

Why not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined when the
interpreter exits, and a thread blocked in the kernel on a hung NFS server can never be
joined (nor cancelled: no signal reaches a thread in uninterruptible sleep). With such a
pool, ``vend serve`` could never exit after SIGTERM. These threads are daemon threads: at
exit they are abandoned, and the process ends on time.

The queue is bounded too: when a mount's threads are all stuck and ``max_queued`` calls
already wait, ``submit`` refuses at once (``PoolFull``) instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, Final, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_STOP: Final = object()


class PoolFull(RuntimeError):
    """Every thread is busy and the queue is full: the mount is overloaded or hung."""


class QueueTimeout(TimeoutError):
    """The call waited longer than its queue timeout for a free thread (overload)."""


class RunTimeout(TimeoutError):
    """The call ran longer than its run timeout (the filesystem is slow or hung)."""


async def call_in(
    pool: DaemonPool,
    fn: Callable[..., T],
    *args: object,
    run_timeout_s: float,
    queue_timeout_s: float,
    discard: Callable[[T], object] | None = None,
    on_submit: Callable[[Future[T]], object] | None = None,
    cancellable: bool = False,
) -> T:
    """Run ``fn(*args)`` in ``pool`` and await it, timing the wait and the run apart.

    A call that waits in the queue behind other work is not slow itself: only the time
    it spends *running* counts against ``run_timeout_s``, so load alone never looks like
    a hung filesystem.

    Args:
        pool: the pool to run in.
        fn: a blocking function.
        *args: its arguments.
        run_timeout_s: longest the call may run once a thread has it, in seconds.
        queue_timeout_s: longest it may wait for a thread, in seconds.
        discard: called with the result of a call that finishes after ``RunTimeout``
            or after the awaiting task was cancelled (to close what it opened), or None.
        on_submit: called with the call's future once it is queued (the mount's
            bookkeeping of operations in flight), or None.
        cancellable: when the awaiting task is cancelled, cancel the call too if it has
            not started yet (its arguments must own nothing the caller would leak).

    Returns:
        What ``fn`` returned.

    Raises:
        PoolFull: the queue is full.
        QueueTimeout: no thread took the call within ``queue_timeout_s``; it is cancelled.
        RunTimeout: it ran longer than ``run_timeout_s``; it keeps its thread until it
            returns (nothing can interrupt a thread blocked in the kernel).
        asyncio.CancelledError: the awaiting task was cancelled; a call still queued is
            cancelled too where ``cancellable``, otherwise (or once running) it is left
            to finish and its result discarded.
        Exception: whatever ``fn`` raised.
    """
    future = pool.submit(fn, *args)
    if on_submit is not None:
        on_submit(future)
    waiter = asyncio.wrap_future(future)
    try:
        return await _await_call(pool, future, waiter, run_timeout_s, queue_timeout_s, discard)
    except asyncio.CancelledError:
        if not (cancellable and future.cancel()):
            waiter.add_done_callback(functools.partial(_abandoned, discard))
        raise


async def _await_call(
    pool: DaemonPool,
    future: Future[T],
    waiter: asyncio.Future[T],
    run_timeout_s: float,
    queue_timeout_s: float,
    discard: Callable[[T], object] | None,
) -> T:
    """The waiting half of ``call_in``: time the queue and the run apart."""
    queued_until = time.monotonic() + queue_timeout_s
    while True:
        started = getattr(future, "started_at", None)
        if started is None:
            remaining = min(queued_until - time.monotonic(), run_timeout_s)
        else:
            remaining = started + run_timeout_s - time.monotonic()
        if remaining > 0:
            done, _ = await asyncio.wait({waiter}, timeout=remaining)
            if done:
                if waiter.cancelled():  # cancelled while queued (cancel_queued)
                    raise QueueTimeout(pool.name)
                return waiter.result()
            continue
        if started is None:
            if future.cancel():
                waiter.cancel()
                raise QueueTimeout(pool.name)
            continue  # it just started: time its run
        waiter.add_done_callback(functools.partial(_abandoned, discard))
        raise RunTimeout(pool.name)


def _abandoned(discard: Callable[[Any], object] | None, waiter: asyncio.Future[Any]) -> None:
    """Done-callback of a call nobody awaits any more: release its result, no log noise."""
    if waiter.cancelled() or waiter.exception() is not None:
        return
    if discard is not None:
        discard(waiter.result())


class DaemonPool(Executor):
    """A fixed-size pool of daemon threads with a bounded queue.

    Args:
        max_workers: threads, started on demand.
        max_queued: calls allowed to wait for a thread.
        name: prefix of the threads' names (``vend-<mount>``), seen in ``ps -L``.
    """

    def __init__(self, max_workers: int, max_queued: int, name: str) -> None:
        self._max_workers = max_workers
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queued)
        self._name = name
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._shutdown = False

    @property
    def name(self) -> str:
        """The pool's name (``vend-<mount>``)."""
        return self._name

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on a thread of this pool.

        Returns:
            A future of its result.

        Raises:
            PoolFull: ``max_queued`` calls are already waiting.
            RuntimeError: the pool was shut down.
        """
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("pool shut down")
            try:
                self._queue.put_nowait((future, fn, args, kwargs))
            except queue.Full:
                raise PoolFull(self._name) from None
            # A thread for each call waiting beyond the idle ones: an idle thread that
            # has not yet taken an earlier call is not free for this one.
            if self._queue.qsize() > self._idle and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                self._idle += 1
                thread.start()
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            future, fn, args, kwargs = item
            with self._lock:
                self._idle -= 1
            if future.set_running_or_notify_cancel():
                future.started_at = time.monotonic()
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1

    def cancel_queued(self) -> int:
        """Cancel every call still waiting for a thread (the mount went down).

        Returns:
            How many calls were cancelled.
        """
        cancelled = 0
        with self._lock:
            kept = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP and item[0].cancel():
                    cancelled += 1
                else:
                    kept.append(item)
            for item in kept:
                self._queue.put_nowait(item)
        return cancelled

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls; threads end after the calls already queued.

        Args:
            wait: ignored for threads blocked in the kernel; vend never waits for them.
            cancel_futures: cancel calls that have not started.
        """
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    item[0].cancel()
        for _ in threads:
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:
                break
