"""Federation: which mount serves a name.

The first mount, in the configured order, that holds the name as a regular file serves
it; copies on later mounts are shadowed. To keep a lookup's time independent of how many
mounts there are, the name is looked up on the mounts *in parallel*, each in its own
mount's threads, and the answers are taken in priority order: a later mount's answer is
used only once every earlier mount has answered "absent", or is down, or is late (past
its lookup deadline, ``app.federation.pace``) and the name is not remembered to live
there. Lookups no longer needed are cancelled (if still queued) or their results closed.

Cost: a name never requested before costs one lookup (an ``open``, with its ``stat``)
on every mount that is up, not only on the mounts up to the one that has it. A name
remembered to live on mount *k* (``app.federation.memory``) is first looked up on mounts
1..*k* only; the later mounts are asked only if none of those has it.

What else can happen:

- a directory, where ``index_names`` is set and the request has no trailing ``/``:
  a redirect to the same path with ``/`` added, as Apache's mod_dir does;
- ``EACCES`` on the first mount that has the name: 403, the search stops there;
- a mount that is down or fails (I/O error, timeout): if the name is remembered to live
  there (under ``hold_remembered``), 503: a later mount may hold an older copy; the same
  mount when late is waited for (up to ``fs_op_s``). Otherwise later mounts answer, and when none
  has the name the answer is 503 rather than 404, because the failed mount may hold it;
  a mount that is only late is waited for before that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from app.federation.batch import Ask
from app.federation.mount import Mount
from app.federation.open import Lookup, MountUnavailable, OpenFile, SmallFile
from app.federation.pace import GATE_POLL_S

log = logging.getLogger("vend.mounts")


class Miss(Enum):
    """Why no file was found."""

    NOT_FOUND = 404
    FORBIDDEN = 403
    UNAVAILABLE = 503


@dataclass(frozen=True, slots=True)
class Redirect:
    """The name is a directory: the caller redirects to the request path with ``/`` added.

    Attributes:
        mount: the mount holding the directory.
    """

    mount: Mount


Outcome = OpenFile | SmallFile | Lookup | MountUnavailable
Verdict = OpenFile | SmallFile | Redirect | Miss


class Search:
    """One request's search for a name over the mounts: asks, answers, and the verdict.

    The asks go to the mounts' batches (``app.federation.batch``); each answer, and each
    tick of a mount whose call runs late, makes the search decide again, in priority
    order (see the module docstring). Nothing here waits: ``future`` gets the verdict,
    and the listeners (``listen``) are called with it in the call that decided it (the
    cold path's answers go out in the loop turn their batch came back in, not one turn
    and three scheduled callbacks later).

    Args: as ``find_file``'s.

    Attributes:
        future: the verdict: an open file (the caller closes it), a small file, a
            ``Redirect`` or a ``Miss``.
    """

    __slots__ = (
        "_alone",
        "_asks",
        "_known",
        "_listeners",
        "_mounts",
        "_timer",
        "candidates",
        "future",
        "read",
        "redirect",
    )

    def __init__(
        self,
        mounts: Sequence[Mount],
        candidates: Sequence[str],
        *,
        redirect_directories: bool,
        max_read_bytes: int = 0,
        remembered: Mount | None = None,
        hold_remembered: bool = True,
    ) -> None:
        self._mounts = mounts
        self.candidates = candidates
        self.redirect = redirect_directories
        self.read = max_read_bytes
        self._known = remembered if hold_remembered else None
        self._asks: list[Ask] = []
        self._alone = False  # a single-call lookup among the asks: no batch ticks for it
        self._timer: asyncio.TimerHandle | None = None
        self._listeners: list[Callable[[Verdict | None], object]] = []
        self.future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._start(len(mounts) if remembered is None else mounts.index(remembered) + 1)
        self.update()

    def _start(self, upto: int) -> None:
        asks, update = self._asks, self.update
        for mount in self._mounts[len(asks) : upto]:
            ask = mount.ask(self.candidates, self.redirect, self.read, update)
            asks.append(ask)
            if ask.watch is not None:
                self._alone = True

    def update(self) -> None:
        """Decide again (an ask was answered, or a mount's call runs late)."""
        if self.future.done():
            return
        while True:
            verdict = _decide(self._mounts, self._asks, self._known, time.monotonic())
            if verdict is not _MORE:
                break
            self._start(len(self._mounts))
        if verdict is not _WAIT:
            self._decided(verdict)  # type: ignore[arg-type]
            return
        if self._alone and any(a.watch is not None and a.outcome is None for a in self._asks):
            self._poll()  # a single-call lookup: no batch ticks for it

    def _poll(self) -> None:
        """Decide again when a single-call lookup gets late (at least every GATE_POLL_S)."""
        if self._timer is not None:
            self._timer.cancel()
        now = time.monotonic()
        waits = [
            self._mounts[i].pace.deadline_s() - ask.running_s(now)
            for i, ask in enumerate(self._asks)
            if ask.outcome is None
        ]
        timeout = max(0.01, min([w for w in waits if w > 0], default=GATE_POLL_S))
        self._timer = asyncio.get_running_loop().call_later(min(timeout, GATE_POLL_S), self.update)

    def listen(self, callback: Callable[[Verdict | None], object]) -> None:
        """Call ``callback`` with the verdict once it is decided, or with None when the
        search is cancelled (``wait``'s caller went away).

        A verdict decided already (every mount down, say) is passed on at the loop's
        next turn, never during this call. A listener that raises is logged; the others
        are still called.

        Args:
            callback: takes the verdict (see ``future``) or None, on the event loop.
        """
        future = self.future
        if future.done():
            verdict = None if future.cancelled() else future.result()
            asyncio.get_running_loop().call_soon(callback, verdict)
        else:
            self._listeners.append(callback)

    def _decided(self, verdict: Verdict) -> None:
        """The verdict is in: let go of every other answer, then tell the listeners."""
        self._let_go(verdict)
        self.future.set_result(verdict)
        self._tell(verdict)

    def _tell(self, verdict: Verdict | None) -> None:
        listeners, self._listeners = self._listeners, []
        for callback in listeners:
            try:
                callback(verdict)
            except Exception:  # as the loop does for a future's done-callback
                log.exception("a lookup's listener failed")

    async def wait(self) -> Verdict:
        """Wait for the verdict.

        Returns:
            As ``future``'s result.

        Raises:
            asyncio.CancelledError: the caller was cancelled; an open file decided
                meanwhile is closed.
        """
        future = self.future
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                found = future.result()  # decided, but the caller went away before it woke
                if isinstance(found, OpenFile):
                    found.close()
            else:  # cancelled while the asks ran: nobody wants their answers
                future.cancel()
                self._let_go(None)
                self._tell(None)
            raise

    def _let_go(self, kept: Verdict | None) -> None:
        """Stop deciding; drop every ask but the one whose outcome is ``kept``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for ask in self._asks:
            ask.on_answer = None  # no cycle left for the collector: the refcount frees them
            if kept is None or ask.outcome is not kept:
                ask.drop()


async def find_file(
    mounts: Sequence[Mount],
    candidates: Sequence[str],
    *,
    redirect_directories: bool,
    max_read_bytes: int = 0,
    remembered: Mount | None = None,
    hold_remembered: bool = True,
) -> Verdict:
    """Find the first mount holding one of ``candidates`` as a regular file.

    Args:
        mounts: the mounts, in priority order.
        candidates: names to try on each mount, in order (one name, or a directory's
            index names).
        redirect_directories: answer a directory with a ``Redirect`` (index names are
            configured and the request had no trailing ``/``); otherwise a directory is
            treated as absent.
        max_read_bytes: files of at most this size are read whole in the mount's thread
            and returned as a ``SmallFile`` (0: never).
        remembered: the mount the name is remembered to live on, or None. The lookup
            starts on the mounts up to it, and on the later ones only when none of those
            has the name.
        hold_remembered: ``down_mount_policy = "unavailable"``: when the remembered
            mount is down or fails the answer is 503 rather than an older copy from a
            later mount, and when it is late it is waited for. False: failed and late
            mounts are all passed over.

    Returns:
        The small file's bytes, the open file (the caller closes it), a ``Redirect``, or
        a ``Miss``.
    """
    search = Search(
        mounts,
        candidates,
        redirect_directories=redirect_directories,
        max_read_bytes=max_read_bytes,
        remembered=remembered,
        hold_remembered=hold_remembered,
    )
    return await search.wait()


_WAIT: Final = object()
_MORE: Final = object()


def _decide(
    mounts: Sequence[Mount], asks: Sequence[Ask], known_mount: Mount | None, now: float
) -> Verdict | object:
    """The answer so far, in priority order, or ``_WAIT`` / ``_MORE`` (start the rest)."""
    failed = passed_late = False
    for i, mount in enumerate(mounts):
        if i >= len(asks):
            return _MORE
        found = asks[i].outcome
        if found is None:
            if mount is not known_mount and mount.is_late(asks[i].running_s(now), now):
                passed_late = True  # a later mount's answer may do meanwhile
                continue
            return _WAIT
        if isinstance(found, MountUnavailable):
            if mount is known_mount:
                return Miss.UNAVAILABLE
            failed = True
        elif isinstance(found, (OpenFile, SmallFile)):
            return found
        elif found is Lookup.FORBIDDEN:
            return Miss.FORBIDDEN
        elif found is Lookup.DIRECTORY:
            return Redirect(mount)
    if passed_late:
        return _WAIT  # nobody else has it: the late mount may, wait for it
    return Miss.UNAVAILABLE if failed else Miss.NOT_FOUND


async def list_copies(
    mounts: Sequence[Mount], name: str
) -> list[tuple[Mount, OpenFile | SmallFile | Lookup | str]]:
    """Look ``name`` up on every mount, for ``vend locate``.

    Args:
        mounts: the mounts, in priority order.
        name: a validated relative name.

    Returns:
        One ``(mount, outcome)`` per mount: an ``OpenFile`` (closed already), a ``Lookup``,
        or the errno name of a failure.
    """
    copies: list[tuple[Mount, OpenFile | SmallFile | Lookup | str]] = []
    for mount in mounts:
        try:
            found = await mount.lookup(name)
        except MountUnavailable as exc:
            copies.append((mount, str(exc)))
            continue
        if isinstance(found, OpenFile):
            found.close()
        copies.append((mount, found))
    return copies
