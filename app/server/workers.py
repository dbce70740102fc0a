"""``--workers N``: vend's own supervisor of N worker processes on one listening socket.

The parent binds the socket once and starts N workers (fresh interpreters running this
module, the socket passed as an inherited descriptor); each worker runs
``uvicorn.Server(config).serve`` on it. What the parent does, after gunicorn's arbiter:

- SIGHUP: forwarded to every worker, which reloads its settings in place
  (``VendApp.reload``): no worker is replaced, no connection is closed, and what a
  worker keeps across a reload (its counters, the threads and health of mounts that
  did not change) stays.
- SIGTERM or SIGINT: SIGTERM to every worker, which stops as one server does (drain,
  then in-flight requests get ``timeouts.graceful_shutdown_s``); a worker still running
  ``STOP_MARGIN_S`` seconds after that is killed. A second signal skips the drain.
- A worker that dies unexpectedly is replaced after a back-off (``RESTART_DELAYS_S``):
  the other workers keep serving and the socket keeps queueing connections meanwhile.
  A worker that fails to start before any worker has served (the settings cannot be
  used: an access log that cannot be opened, for example), one that fails to start with
  status 3 (uvicorn's start-up failure), and ``MAX_FAILED_STARTS`` failed starts in a
  row in one slot stop vend with status 3.
- A dead worker's live gauges are removed from the multiprocess metrics directory
  (prometheus-client's ``mark_process_dead``).

Signals are never lost to a worker that is still starting: the parent keeps SIGHUP,
SIGTERM, SIGINT and SIGCHLD blocked and takes them with ``sigtimedwait``; a worker
inherits that mask, unblocks SIGTERM and SIGINT at once, and SIGHUP only once it
serves (its reload handler is installed by then), so a reload sent meanwhile is
delivered then. Each worker shares a socket pair with the parent: it writes one byte
there once it serves, and stops on its own when the parent's end closes (the parent was
killed), so no orphan keeps the port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.multiprocess import mark_process_dead

from app.logs import WORKER_ENV
from app.ops.metrics import MULTIPROC_ENV

log = logging.getLogger("vend.workers")

TICK_S: Final = 0.2
"""Longest wait for a signal before the parent checks its workers again, seconds."""
RESTART_DELAYS_S: Final = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
"""Delay before replacing a worker, by how many times in a row its slot died young."""
YOUNG_S: Final = 30.0
"""A worker that dies within this many seconds of its start counts as dying young."""
MAX_FAILED_STARTS: Final = 5
"""Starts in a row that never served, after which vend gives up (exit status 3)."""
STOP_MARGIN_S: Final = 5.0
"""Added to drain and graceful shutdown before a worker that will not stop is killed."""
STARTUP_FAILURE: Final = 3
_SIGNALS: Final = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})


@dataclass
class _Worker:
    """One worker process and what the parent knows of it."""

    slot: int
    proc: subprocess.Popen[bytes]
    channel: socket.socket
    started_at: float
    ready: bool = False


@dataclass
class _Slot:
    """One of the N places for a worker: its failures in a row and when to restart it."""

    young_deaths: int = 0
    failed_starts: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Runs and watches ``workers`` worker processes sharing ``sockets``.

    Args:
        workers: how many worker processes.
        sockets: listening sockets, bound (and listening) by the caller; each worker
            serves all of them.
        stop_timeout_s: after SIGTERM, how long a worker may take to stop before it is
            killed, in seconds (drain plus graceful shutdown plus a margin).
        on_reload: called on SIGHUP before the workers are signalled (``serve`` reads
            the settings anew there, so a worker started later gets the last valid
            ones), or None.
    """

    workers: int
    sockets: list[socket.socket]
    stop_timeout_s: float
    on_reload: Callable[[], None] | None = None
    _running: dict[int, _Worker] = field(default_factory=dict)
    _slots: list[_Slot] = field(default_factory=list)
    _stopping_since: float | None = None
    _status: int = 0
    _served: bool = False

    def run(self) -> int:
        """Start the workers and supervise them until SIGTERM or SIGINT.

        Returns:
            0 after a clean stop; 3 when workers could not start.
        """
        self._slots = [_Slot() for _ in range(self.workers)]
        # A handler (never called: the signal stays blocked) rather than SIG_IGN, under
        # which a SIGHUP might be discarded instead of waiting for sigtimedwait.
        previous_hup = signal.signal(signal.SIGHUP, _ignore)
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for slot in range(self.workers):
                self._spawn(slot)
            while self._running or self._stopping_since is None:
                info = signal.sigtimedwait(_SIGNALS, TICK_S)
                if info is not None:
                    self._on_signal(info.si_signo)
                self._reap()
                self._read_ready()
                self._restart_due()
                self._kill_overdue()
        finally:
            for worker in self._running.values():  # only after an unexpected error
                worker.proc.kill()
                worker.proc.wait()
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            signal.signal(signal.SIGHUP, previous_hup)
        return self._status

    def _spawn(self, slot: int) -> None:
        channel, worker_end = socket.socketpair()
        fds = [s.fileno() for s in self.sockets]
        command = [sys.executable, "-P", "-m", "app.server.workers"]
        command += ["--control-fd", str(worker_end.fileno())]
        for fd in fds:
            command += ["--listen-fd", str(fd)]
        try:
            proc = subprocess.Popen(
                command,
                pass_fds=[*fds, worker_end.fileno()],
                env={**os.environ, WORKER_ENV: str(slot + 1)},  # in its log lines
            )
        except BaseException:
            channel.close()
            raise
        finally:
            worker_end.close()
        self._running[proc.pid] = _Worker(slot, proc, channel, time.monotonic())
        self._slots[slot].restart_at = None
        log.info("worker %d started (pid %d)", slot + 1, proc.pid)

    def _on_signal(self, signo: int) -> None:
        if signo == signal.SIGHUP and self._stopping_since is None:
            log.warning("SIGHUP: reloading the settings in %d workers", len(self._running))
            if self.on_reload is not None:
                self.on_reload()
            self._signal_all(signal.SIGHUP)
        elif signo in (signal.SIGTERM, signal.SIGINT):
            self._stop(f"{signal.Signals(signo).name}: stopping the workers")

    def _stop(self, why: str, status: int = 0) -> None:
        """Send SIGTERM to every worker (again: they skip the drain); restart none."""
        if self._stopping_since is None:
            self._stopping_since = time.monotonic()
            self._status = status
            log.warning("%s", why)
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signo: int) -> None:
        for pid in self._running:
            with contextlib.suppress(ProcessLookupError):  # exited; reaped on this tick
                os.kill(pid, signo)

    def _reap(self) -> None:
        for pid, worker in list(self._running.items()):
            status = worker.proc.poll()
            if status is None:
                continue
            del self._running[pid]
            self._read_ready_fd(worker)
            worker.channel.close()
            metrics_dir = os.environ.get(MULTIPROC_ENV)
            if metrics_dir:  # its live gauges (vend_mount_up) must not outlive it
                mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
            if self._stopping_since is None:
                self._replace(worker, status)

    def _replace(self, worker: _Worker, status: int) -> None:
        """Schedule a new worker in a dead one's slot, or give up on starting."""
        slot = self._slots[worker.slot]
        how = f"status {status}" if status >= 0 else signal.Signals(-status).name
        if not worker.ready:
            slot.failed_starts += 1
            given_up = slot.failed_starts >= MAX_FAILED_STARTS
            if not self._served or status == STARTUP_FAILURE or given_up:
                self._stop(f"worker {worker.slot + 1} could not start ({how}): stopping", 3)
                return
        lived_s = time.monotonic() - worker.started_at
        slot.young_deaths = slot.young_deaths + 1 if lived_s < YOUNG_S else 1
        delay_s = RESTART_DELAYS_S[min(slot.young_deaths, len(RESTART_DELAYS_S)) - 1]
        slot.restart_at = time.monotonic() + delay_s
        log.error(
            "worker %d (pid %d) exited (%s) after %.1f s: replacing it in %.1f s",
            worker.slot + 1,
            worker.proc.pid,
            how,
            lived_s,
            delay_s,
        )

    def _read_ready(self) -> None:
        waiting = {w.channel: w for w in self._running.values() if not w.ready}
        if waiting:
            readable, _, _ = select.select(list(waiting), [], [], 0)
            for channel in readable:
                self._read_ready_fd(waiting[channel])

    def _read_ready_fd(self, worker: _Worker) -> None:
        if worker.ready or not select.select([worker.channel], [], [], 0)[0]:
            return
        if worker.channel.recv(1):
            worker.ready = self._served = True
            self._slots[worker.slot].failed_starts = 0
            log.info("worker %d (pid %d) serves", worker.slot + 1, worker.proc.pid)

    def _restart_due(self) -> None:
        if self._stopping_since is not None:
            return
        now = time.monotonic()
        for index, slot in enumerate(self._slots):
            if slot.restart_at is not None and slot.restart_at <= now:
                try:
                    self._spawn(index)
                except OSError as exc:  # no process or descriptor to spare: try later
                    slot.restart_at = now + RESTART_DELAYS_S[-1]
                    log.error("worker %d could not be started (%s): retrying", index + 1, exc)

    def _kill_overdue(self) -> None:
        if self._stopping_since is None:
            return
        if time.monotonic() - self._stopping_since > self.stop_timeout_s:
            for worker in self._running.values():
                log.error("worker pid %d did not stop in time: killing it", worker.proc.pid)
                worker.proc.kill()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.server.workers")
    parser.add_argument("--listen-fd", type=int, action="append", required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    return parser.parse_args(argv)


def worker_main(argv: list[str] | None = None) -> None:
    """Run one worker: serve the inherited sockets until SIGTERM or SIGINT.

    Settings come from the environment ``serve`` set (``app.server.config``).

    Args:
        argv: ``--listen-fd FD`` (repeatable) and ``--control-fd FD``; default
            ``sys.argv[1:]``.
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, {signal.SIGHUP})  # see the module docstring
    args = _parse_args(argv)
    import uvicorn

    from app.server.config import worker_config

    config = worker_config()
    server = uvicorn.Server(config)
    control = socket.socket(fileno=args.control_fd)
    control.setblocking(False)
    serving: list[bool] = []

    def stop_orphan() -> None:
        """The main process is gone (its end of the control socket closed): stop."""
        asyncio.get_running_loop().remove_reader(control)
        if not server.should_exit:
            log.error("vend's main process is gone: this worker stops")
            server.should_exit = True

    async def notify_serving() -> None:
        """Called by uvicorn once serving (then every ``timeout_notify`` seconds)."""
        if serving:
            return
        serving.append(True)
        if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None):
            log.warning("no SIGHUP handler in this worker: SIGHUP is ignored")
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        try:
            control.send(b"1")
        except OSError:
            stop_orphan()
            return
        # The main process never writes: readable means it has exited.
        asyncio.get_running_loop().add_reader(control, stop_orphan)

    config.callback_notify = notify_serving
    sockets = [socket.socket(fileno=fd) for fd in args.listen_fd]
    # uvicorn re-raises the stopping signal after its shutdown, under the handler found
    # when it started: let that be a no-op, so the worker exits 0 after a clean stop.
    for signo in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signo, _ignore)
    server.run(sockets=sockets)


def _ignore(signo: int, frame: object) -> None:
    """A signal handler that does nothing."""


if __name__ == "__main__":
    worker_main()
