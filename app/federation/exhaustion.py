"""Running out of descriptors or memory: the process's trouble, never a mount's.

``EMFILE`` (this process's ``RLIMIT_NOFILE`` reached), ``ENFILE`` (the system's file
table full) and ``ENOMEM`` say nothing about an NFS server: a client holding many
connections can cause them. A call failing so must not mark its mount down, trip its
breaker or set its ``last_error``; the request gets 503 with ``Retry-After``, and the
event is logged at most once per ``LOG_INTERVAL_S`` with the limit and the descriptors
in use, and counted (``EXHAUSTED``).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import time
from typing import Final

log = logging.getLogger("vend.exhaustion")

EXHAUSTION_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
"""Errors that mean the process (or host) ran out of descriptors or memory."""
LOG_INTERVAL_S: Final = 10.0
"""At most one log line about exhaustion per this many seconds."""

EXHAUSTED: dict[str, int] = {}
"""Calls that failed with exhaustion, by errno name, since the process started."""
_last_logged = [-LOG_INTERVAL_S]


def is_exhaustion(code: int | None) -> bool:
    """Tell whether an errno is resource exhaustion (RLIMIT_NOFILE, file table, memory).

    Args:
        code: an ``OSError.errno``, or None.

    Returns:
        True for ``EMFILE``, ``ENFILE`` and ``ENOMEM``.
    """
    return code in EXHAUSTION_ERRNOS


def descriptors_in_use() -> int:
    """How many descriptors this process has open (``/proc/self/fd``), or -1 when unknown.

    Listing the directory takes one descriptor itself, which exhaustion may deny.
    """
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def note_exhaustion(code: int, where: str) -> str:
    """Count one exhaustion and log it, at most once per ``LOG_INTERVAL_S`` seconds.

    Args:
        code: the errno (one of ``EXHAUSTION_ERRNOS``).
        where: what failed (``"lookup"``, ``"probe"``, ``"send"``...), for the log.

    Returns:
        The errno name (``"EMFILE"``...).
    """
    name = errno.errorcode.get(code, "EMFILE")
    EXHAUSTED[name] = EXHAUSTED.get(name, 0) + 1
    now = time.monotonic()
    if now - _last_logged[0] >= LOG_INTERVAL_S:
        _last_logged[0] = now
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.error(
            "out of resources (%s) in %s: descriptor limit %d, %d in use; "
            "answering 503, no mount is blamed",
            name,
            where,
            soft,
            descriptors_in_use(),
        )
    return name


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit, and log the value.

    Returns:
        The (soft, hard) limits now, in descriptors.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, hard, exc)
    log.info("descriptor limit (RLIMIT_NOFILE): %d", soft)
    return soft, hard
