"""Mount health: the background probe that closes a mount's breaker again.

Every ``probe_interval_s`` seconds each mount's root is probed in that mount's own probe
thread, with the operation timeout (``Mount.probe``): a stat of the root, and for mounts
marked ``require_mountpoint`` a check that the root is still a mount point, not the empty
directory beneath an export that came unmounted (judged from ``/proc/self/mountinfo``,
``app.federation.root``). A mount that answers is marked up; one that fails or times out
is marked down. Requests mark a mount down too, at their first timeout or I/O error
(``Mount._run``). Before that, a mount that stops answering is *overdue* within its
lookup deadline (``app.federation.pace``), and lookups take other mounts' answers
meanwhile, so no client waits out ``fs_op_s`` for a name another mount holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from app.federation.mount import Mount

log = logging.getLogger("vend.health")


async def probe_forever(
    mounts: Callable[[], Sequence[Mount]],
    interval_s: float,
    on_probe: Callable[[Mount], None] | None = None,
) -> None:
    """Probe every mount, concurrently, every ``interval_s`` seconds, until cancelled.

    Args:
        mounts: returns the current mount table (it changes on reload).
        interval_s: seconds between two rounds.
        on_probe: called with each mount after its probe (metrics), or None.
    """
    while True:
        await asyncio.sleep(interval_s)
        current = list(mounts())

        async def one(mount: Mount) -> None:
            await mount.probe()
            if on_probe is not None:
                on_probe(mount)

        await asyncio.gather(*(one(m) for m in current), return_exceptions=True)


def describe(mount: Mount) -> dict[str, object]:
    """A mount's health as JSON-ready data (no filesystem path).

    Returns:
        ``{"name", "state": "up"|"overdue"|"down", "last_error": errno name or None,
        "latency_ms": last probe's duration in milliseconds or None,
        "deadline_ms": the lookup deadline in milliseconds}``.
    """
    latency = mount.probe_latency_s
    return {
        "name": mount.name,
        "state": "down" if mount.real_root is None else mount.state().value,
        "last_error": mount.last_error,
        "latency_ms": None if latency is None else round(latency * 1000, 3),
        "deadline_ms": round(mount.pace.deadline_s() * 1000, 3),
    }
