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

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, Final, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_STOP: Final = object()


class PoolFull(RuntimeError):
    """Every thread is busy and the queue is full: the mount is overloaded or hung."""


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
    def busy(self) -> int:
        """Threads running a call now."""
        with self._lock:
            return len(self._threads) - self._idle

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
            if self._idle == 0 and len(self._threads) < self._max_workers:
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
