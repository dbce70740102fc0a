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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from app.federation.mount import GATE_POLL_S, Mount, MountUnavailable
from app.federation.open import Lookup, OpenFile, SmallFile
from app.federation.pace import RunWatch


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


async def _on_mount(
    mount: Mount,
    candidates: Sequence[str],
    redirect_directories: bool,
    max_read_bytes: int,
    watch: RunWatch,
) -> Outcome:
    """Look the candidates up on one mount, in order; never raises MountUnavailable."""
    try:
        for name in candidates:
            found = await mount.lookup(name, max_read_bytes, watch)
            if found is Lookup.DIRECTORY and not redirect_directories:
                continue
            if found is not Lookup.ABSENT:
                return found
    except MountUnavailable as exc:
        return exc
    return Lookup.ABSENT


def _release(task: asyncio.Task[Outcome]) -> None:
    """Close what a lookup nobody uses opened (also its done-callback)."""
    opened = _opened_by(task)
    if opened is not None:
        opened.close()


async def find_file(
    mounts: Sequence[Mount],
    candidates: Sequence[str],
    *,
    redirect_directories: bool,
    max_read_bytes: int = 0,
    remembered: Mount | None = None,
    hold_remembered: bool = True,
) -> OpenFile | SmallFile | Redirect | Miss:
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
    known_mount = remembered if hold_remembered else None
    tasks: list[asyncio.Task[Outcome]] = []
    watches: list[RunWatch] = []

    def start(upto: int) -> None:
        for mount in mounts[len(tasks) : upto]:
            watches.append(RunWatch())
            tasks.append(
                asyncio.ensure_future(
                    _on_mount(mount, candidates, redirect_directories, max_read_bytes, watches[-1])
                )
            )

    start(len(mounts) if remembered is None else mounts.index(remembered) + 1)
    verdict: object = _WAIT
    try:
        while True:
            verdict = _decide(mounts, tasks, watches, known_mount, time.monotonic())
            if verdict is _MORE:
                start(len(mounts))
                continue
            if verdict is not _WAIT:
                return verdict  # type: ignore[return-value]
            pending = [t for t in tasks if not t.done()]
            now = time.monotonic()
            waits = [
                mounts[i].pace.deadline_s() - watches[i].running_s(now)
                for i, t in enumerate(tasks)
                if not t.done()
            ]
            timeout = max(0.01, min([w for w in waits if w > 0], default=GATE_POLL_S))
            await asyncio.wait(
                pending, timeout=min(timeout, GATE_POLL_S), return_when=asyncio.FIRST_COMPLETED
            )
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
                task.add_done_callback(_release)
            elif _opened_by(task) not in (None, verdict):
                _release(task)  # a copy that lost to an earlier mount's answer


def _opened_by(task: asyncio.Task[Outcome]) -> OpenFile | None:
    """The open file a finished lookup returned, if any."""
    if task.cancelled() or task.exception() is not None:
        return None
    found = task.result()
    return found if isinstance(found, OpenFile) else None


_WAIT: Final = object()
_MORE: Final = object()


def _decide(
    mounts: Sequence[Mount],
    tasks: Sequence[asyncio.Task[Outcome]],
    watches: Sequence[RunWatch],
    known_mount: Mount | None,
    now: float,
) -> OpenFile | SmallFile | Redirect | Miss | object:
    """The answer so far, in priority order, or ``_WAIT`` / ``_MORE`` (start the rest)."""
    failed = passed_late = False
    for i, mount in enumerate(mounts):
        if i >= len(tasks):
            return _MORE
        task = tasks[i]
        if not task.done():
            if mount is not known_mount and mount.is_late(watches[i], now):
                passed_late = True  # a later mount's answer may do meanwhile
                continue
            return _WAIT
        found = task.result()
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
