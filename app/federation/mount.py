"""The mount runtime: a configured mount's real path, its own threads, and its breaker.

Every filesystem call on a mount runs in that mount's own bounded pool of daemon
threads (``app.federation.threads``) with a timeout, never on the event loop, so a hung
NFS server stalls only its own mount. What is opened, and how containment is checked,
is ``app.federation.open``'s.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, TypeVar

from app.federation.batch import SLOW_NAME_S, Ask, AskQueue, Found
from app.federation.exhaustion import EXHAUSTION_ERRNOS, is_exhaustion, note_exhaustion
from app.federation.open import (
    Lookup,
    MountUnavailable,
    OpenFile,
    SmallFile,
    check_names,
    close_if_file,
    open_in_mount,
)
from app.federation.pace import FLOOR_S, GATE_POLL_S, QUEUE_FACTOR, Pace, RunWatch
from app.federation.root import probe_root
from app.federation.threads import DaemonPool, PoolFull, QueueTimeout, RunTimeout, call_in
from app.settings import MountSettings

log = logging.getLogger("vend.mounts")

T = TypeVar("T")


# Failures that say the mount itself is in trouble: they open its breaker.
_TRIPPING_ERRNOS: Final = frozenset(
    {errno.EIO, errno.ETIMEDOUT, errno.ENOTCONN, errno.ESTALE, errno.EHOSTDOWN, errno.ENODEV}
)

_EXHAUSTION_NAMES: Final = frozenset(errno.errorcode[e] for e in EXHAUSTION_ERRNOS)


class State(Enum):
    """A mount's health, as ``/.well-known/vend/health`` shows it."""

    UP = "up"  # answering within its lookup deadline
    OVERDUE = "overdue"  # an operation is past the deadline and none finished since
    DOWN = "down"  # the breaker is open: an operation ran fs_op_s, or failed with EIO...


Observer = Callable[["Mount", str, float, int], None]
"""Called after lookups with the mount, an outcome (``hit``, ``miss``, ``error``,
``timeout``, ``skipped``), the seconds each took and how many there were (a batch's
lookups of one outcome are told at once)."""


@dataclass(eq=False)
class Mount:
    """A configured mount at run time: settings, real path, threads, and health.

    Health is a circuit breaker: a timeout or an I/O error that means the mount is in
    trouble (EIO, ETIMEDOUT, ENOTCONN, ESTALE after one retry...) marks the mount *down*,
    and lookups then skip it at once instead of waiting on it; the background probe
    (``app.federation.health``) marks it up again when its root answers. Before that, a
    mount can be *overdue* (``app.federation.pace``): then at most one new operation at
    a time is started on it (a scout), the others wait for it to answer or go down.

    Attributes:
        settings: the validated mount settings.
        fs_op_s: timeout of one filesystem operation, in seconds.
        threads: size of its thread pool.
        executor: the mount's own pool (daemon threads, bounded queue).
        real_root: the mount's real path, known once a probe succeeded.
        root_mount_id: ID of the mount at ``real_root`` (``require_mountpoint``: files on
            other mounts are refused), or None.
        up: False while the breaker is open.
        last_error: errno name of the last failure (``"ETIMEDOUT"``, ``"EIO"``...), or None.
        probe_latency_s: how long the last successful probe took, in seconds.
        observer: called after each lookup (metrics), or None.
        pace: its latency, lookup deadline, and operations in flight.
        name_s: recent time of one name's lookup in its threads, in seconds (how a
            batch of asks is split, ``app.federation.batch``).
    """

    settings: MountSettings
    fs_op_s: float
    threads: int
    executor: DaemonPool = field(init=False)
    probe_executor: DaemonPool = field(init=False)
    pace: Pace = field(init=False)
    real_root: str | None = None
    root_mount_id: int | None = None
    up: bool = True
    last_error: str | None = None
    probe_latency_s: float | None = None
    observer: Observer | None = None

    def __post_init__(self) -> None:
        self.executor = DaemonPool(
            self.threads, max_queued=64 * self.threads, name=f"vend-{self.name}"
        )
        # Probes have their own thread, so a full request pool cannot starve them.
        self.probe_executor = DaemonPool(1, max_queued=1, name=f"vend-{self.name}-probe")
        self.pace = Pace(self.fs_op_s)
        self._key = str(self.settings.path)  # asked on every cold lookup
        self._scouting = False
        self._asks = AskQueue(self)
        self.name_s = 2 * SLOW_NAME_S  # unknown: a first batch is shared out
        self.queue_timeout_s = QUEUE_FACTOR * self.fs_op_s

    @property
    def name(self) -> str:
        """The mount's name, as operators see it."""
        return self.settings.name

    @property
    def key(self) -> str:
        """What identifies the mount across reloads: its configured path."""
        return self._key

    def state(self, now: float | None = None) -> State:
        """The mount's health now (``now``: ``time.monotonic()``, seconds, or None).

        A mount not probed yet counts as up: its first lookup probes it.
        """
        if not self.up:
            return State.DOWN
        if self.pace.is_overdue(time.monotonic() if now is None else now):
            return State.OVERDUE
        return State.UP

    def is_late(self, running_s: float, now: float) -> bool:
        """True when a lookup's call has run ``running_s`` seconds, past the deadline, or
        the mount is overdue or down (``now``: ``time.monotonic()``, seconds)."""
        return running_s > self.pace.deadline_s() or self.state(now) is not State.UP

    def mark_down(self, error: str) -> None:
        """Open the breaker: lookups skip this mount until a probe succeeds."""
        if self.up:
            log.error("mount %s is down: %s", self.name, error)
        self.up = False
        self.last_error = error
        # Calls queued behind the stuck ones would each wait out their own timeout.
        self.executor.cancel_queued()

    def mark_up(self, latency_s: float) -> None:
        """Close the breaker after a successful probe that took ``latency_s`` seconds."""
        if not self.up:
            log.warning("mount %s is up again", self.name)
        self.up = True
        self.last_error = None
        self.probe_latency_s = latency_s

    async def _run(
        self,
        executor: DaemonPool,
        fn: Callable[..., T],
        *args: object,
        watch: RunWatch | None = None,
        where: str = "lookup",
    ) -> T:
        """One call in ``executor``; ESTALE is retried once (``where``: for the log).

        Only the time the call *runs* counts against ``fs_op_s``: waiting for a thread
        behind other requests is load, not a failing filesystem, and is allowed
        ``QUEUE_FACTOR`` times as long before the request gets 503 (``EAGAIN``) without
        marking the mount down.
        """
        for attempt in (1, 2):
            try:
                return await call_in(
                    executor,
                    fn,
                    *args,
                    run_timeout_s=self.fs_op_s,
                    queue_timeout_s=QUEUE_FACTOR * self.fs_op_s,
                    discard=close_if_file,
                    on_submit=self.pace.track if watch is None else watch.bind_and(self.pace.track),
                    cancellable=True,
                )
            except (PoolFull, QueueTimeout):
                raise self.unavailable("EAGAIN") from None
            except RunTimeout:
                self.mark_down("ETIMEDOUT")
                raise MountUnavailable("ETIMEDOUT") from None
            except OSError as exc:
                if exc.errno == errno.ESTALE and attempt == 1:
                    continue  # a stale NFS file handle: the path is looked up anew
                raise self.count_error(exc.errno, where) from None
        raise AssertionError("unreachable")

    def count_error(self, code: int | None, where: str = "lookup") -> MountUnavailable:
        """Record a failed filesystem call (``code``: its errno, None if unknown;
        ``where``: what hit it, for the log).

        Running out of descriptors or memory (EMFILE, ENFILE, ENOMEM) is the process's
        trouble: logged and counted (``app.federation.exhaustion``), the mount untouched.
        The errors that say the mount is in trouble (EIO, ETIMEDOUT, ENOTCONN, ESTALE
        after its retry...) open the breaker; any other is only remembered as the last.

        Returns:
            The ``MountUnavailable`` the caller answers with (the errno name).
        """
        if is_exhaustion(code):
            return MountUnavailable(note_exhaustion(code or 0, where))
        name = errno.errorcode.get(code or 0, "EIO")
        if code in _TRIPPING_ERRNOS or code is None:
            self.mark_down(name)
        else:
            self.last_error = name
        return MountUnavailable(name)

    def unavailable(self, error: str) -> MountUnavailable:
        """What a call that could not run answers: the last error while the mount is
        down, else ``error`` (``EAGAIN``: its queue is full or timed out)."""
        if not self.up:
            return MountUnavailable(self.last_error or "EIO")
        return MountUnavailable(error)

    async def call(self, fn: Callable[..., T], *args: object, watch: RunWatch | None = None) -> T:
        """Run a blocking filesystem call in this mount's pool, with the timeout.

        Args:
            fn: the blocking function.
            *args: its arguments.
            watch: told about the call once submitted (how long it has run), or None.

        Returns:
            What ``fn`` returned.

        Raises:
            MountUnavailable: the mount is down (breaker open), its queue is full
                (``EAGAIN``), the call took longer than ``fs_op_s`` seconds, or it failed
                with an OSError; the message is the errno name. EMFILE, ENFILE and
                ENOMEM never change the mount's state (``app.federation.exhaustion``).
        """
        if not self.up:
            raise self.unavailable("EIO")
        scout = await self._pass_gate()
        try:
            return await self._run(self.executor, fn, *args, watch=watch)
        finally:
            if scout:
                self._scouting = False

    async def _pass_gate(self) -> bool:
        """While the mount is overdue, let one call through at a time.

        Returns:
            True when this call is the scout (it must clear ``_scouting`` when done).

        Raises:
            MountUnavailable: the mount went down while waiting, or the wait lasted
                ``QUEUE_FACTOR`` times ``fs_op_s`` (``EAGAIN``).
        """
        now = time.monotonic()
        until = now + QUEUE_FACTOR * self.fs_op_s
        while self.pace.is_overdue(now):
            if not self.up:
                raise self.unavailable("EIO")
            if not self._scouting:
                self._scouting = True
                return True
            if now >= until:
                raise MountUnavailable("EAGAIN")
            await self.pace.wait_changed(min(until - now, GATE_POLL_S))
            now = time.monotonic()
        return False

    async def probe(self) -> bool:
        """Probe the mount's root in the probe thread, with the timeout; update health.

        Returns:
            True when the root is a readable directory (and a mount point where
            ``require_mountpoint`` is set, judged from ``/proc/self/mountinfo``): the
            mount is marked up. False otherwise: it is marked down with the errno name,
            except for EMFILE, ENFILE or ENOMEM (the process ran out of descriptors or
            memory, ``app.federation.exhaustion``): then its state is left as it was.
        """
        started = time.monotonic()
        try:
            facts = await self._run(
                self.probe_executor,
                probe_root,
                str(self.settings.path),
                self.settings.require_mountpoint,
                where="probe",
            )
        except MountUnavailable as exc:
            if str(exc) not in _EXHAUSTION_NAMES:
                self.mark_down(str(exc))
            return False
        if facts.error in _EXHAUSTION_NAMES:
            note_exhaustion(getattr(errno, str(facts.error)), "probe")
            return False  # descriptors or memory ran out: the mount keeps its state
        if facts.error is not None:
            self.mark_down(facts.error)
            return False
        self.real_root, self.root_mount_id = facts.real, facts.mount_id
        self.mark_up(time.monotonic() - started)
        return True

    def ask(
        self,
        candidates: Sequence[str],
        directories: bool,
        max_read_bytes: int,
        on_answer: Callable[[], object] | None,
    ) -> Ask:
        """Ask for the first of ``candidates`` this mount holds; answered later, on the loop.

        A mount that is up and probed takes the ask into this turn's batch
        (``app.federation.batch``); one that is down answers at once with its last error
        (``on_answer`` is not called for that: ``outcome`` is set on return); one not
        probed yet, or overdue, looks it up the single-call way (``lookup``, which
        probes, and lets one call at a time through while overdue).

        Args:
            candidates: names to try, in order.
            directories: a directory is an answer (``Lookup.DIRECTORY``) rather than
                absent.
            max_read_bytes: read files up to this size whole, in bytes.
            on_answer: called on the event loop once the ask's ``outcome`` is set.

        Returns:
            The ask; its ``outcome`` is an open or small file, a ``Lookup``, or a
            ``MountUnavailable``.
        """
        ask = Ask(candidates, directories, max_read_bytes, on_answer)
        if not self.up:
            self.observe("skipped", time.monotonic())
            ask.outcome = self.unavailable("EIO")
        elif self.real_root is None or self._scouting or self.pace.is_overdue(time.monotonic()):
            ask.watch = RunWatch()
            ask.task = asyncio.ensure_future(self._ask_alone(ask, ask.watch))
        else:
            self._asks.add(ask)
        return ask

    async def _ask_alone(self, ask: Ask, watch: RunWatch) -> None:
        """Answer ``ask`` with single calls (``lookup``), one candidate after the other."""
        found: Found | MountUnavailable = Lookup.ABSENT
        try:
            for name in ask.candidates:
                found = await self.lookup(name, ask.max_read_bytes, watch)
                if found is Lookup.DIRECTORY and not ask.directories:
                    found = Lookup.ABSENT
                    continue
                if found is not Lookup.ABSENT:
                    break
        except MountUnavailable as exc:
            found = exc
        ask.answer(found)

    def note_batch(self, longest_s: float) -> None:
        """Count a batch whose longest name took ``longest_s`` seconds (``name_s``)."""
        self.name_s = 0.8 * self.name_s + 0.2 * longest_s

    async def lookup(
        self, name: str, max_read_bytes: int = 0, watch: RunWatch | None = None
    ) -> OpenFile | SmallFile | Lookup:
        """Look ``name`` up under this mount.

        Args:
            name: a validated relative name.
            max_read_bytes: read files up to this size whole (see ``open_in_mount``).
            watch: told about each call once submitted, or None.

        Returns:
            See ``open_in_mount``.

        Raises:
            MountUnavailable: the mount is down, failed or timed out.
        """
        started = time.monotonic()
        if self.real_root is None and self.up and not await self.probe():
            self.observe("error", started)
            raise MountUnavailable(self.last_error or "EIO")
        if not self.up or self.real_root is None:
            self.observe("skipped", started)
            raise MountUnavailable(self.last_error or "EIO")
        try:
            found = await self.call(
                open_in_mount,
                self.real_root,
                name,
                self,
                max_read_bytes,
                self.root_mount_id if self.settings.require_mountpoint else None,
                watch=watch,
            )
        except MountUnavailable as exc:
            self.observe("timeout" if str(exc) == "ETIMEDOUT" else "error", started)
            raise
        self.observe("miss" if isinstance(found, Lookup) else "hit", started)
        return found

    async def check_names(
        self, names: list[tuple[str, bool]], max_read_bytes: int, deadline: float
    ) -> list[SmallFile | Lookup | None] | None:
        """Look several names up in one call in this mount's pool (see ``check_names``).

        For the name cache's revalidation: nothing here marks the mount down or counts
        toward its pace, and a mount that is down, overdue or slow (its lookup deadline
        above ``pace.FLOOR_S``: requests' lookups keep its threads busy enough) is not
        asked.

        Args:
            names: ``(name, read)`` pairs (see ``app.federation.open.check_names``).
            max_read_bytes: read files up to this size whole, in bytes.
            deadline: ``time.monotonic()`` after which no further name is looked up, in
                seconds.

        Returns:
            One outcome per name, or None when the mount was not asked or the call
            failed or took longer than ``fs_op_s`` seconds.
        """
        root = self.real_root
        now = time.monotonic()
        if (
            not self.up
            or root is None
            or now >= deadline
            or self.pace.deadline_s() > FLOOR_S
            or self.pace.is_overdue(now)
        ):
            return None
        mount_id = self.root_mount_id if self.settings.require_mountpoint else None
        try:
            return await call_in(
                self.executor,
                check_names,
                root,
                names,
                self,
                max_read_bytes,
                mount_id,
                deadline,
                run_timeout_s=self.fs_op_s,
                queue_timeout_s=self.fs_op_s,
                cancellable=True,
            )
        except (PoolFull, QueueTimeout, RunTimeout, OSError, RuntimeError):
            return None  # RuntimeError: the pool was shut down (a reload removed it)

    def observe(self, outcome: str, started: float, count: int = 1) -> None:
        """Tell the observer (metrics) ``count`` lookups' ``outcome`` and their time since
        ``started`` (``time.monotonic()``, seconds)."""
        if self.observer is not None and count:
            self.observer(self, outcome, time.monotonic() - started, count)

    def close(self) -> None:
        """Stop accepting work; threads blocked in the kernel are abandoned, not joined."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.probe_executor.shutdown(wait=False, cancel_futures=True)


def build_mounts(settings: Sequence[MountSettings], *, fs_op_s: float, threads: int) -> list[Mount]:
    """Create the run-time mounts, in priority order.

    Args:
        settings: the configured mounts, first has priority.
        fs_op_s: timeout of one filesystem operation, in seconds.
        threads: size of each mount's thread pool.

    Returns:
        One ``Mount`` per setting, not yet prepared.
    """
    return [Mount(settings=s, fs_op_s=fs_op_s, threads=threads) for s in settings]
