"""The connection's one lazy timer: first byte, whole request, keep-alive idle.

``DeadlineTimer`` is the part of ``VendProtocol`` (``app.server.connection``) that runs
the deadlines the state machine asks for (``app.server.limits``): ``first`` (a new
connection's first byte, ``request_head_s``), ``request`` (a whole request from its
first byte, ``request_head_s``), ``idle`` (between requests, ``keep_alive_s``). One
timer serves them all and is never re-armed per request: moving a deadline is two
assignments (see ``_arm``).
"""

from __future__ import annotations

import asyncio

from app.server.limits import ProtocolLimits, ProtocolMixin


class DeadlineTimer(ProtocolMixin):
    """Mixin of ``VendProtocol``: the deadlines (see the module docstring)."""

    limits: ProtocolLimits
    loop: asyncio.AbstractEventLoop
    disconnected: bool
    _deadline: float
    _deadline_kind: str | None
    _timer: asyncio.TimerHandle | None

    def _close(self) -> None:
        raise NotImplementedError  # VendProtocol's

    def refuse(
        self, status: int | None, reason: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        raise NotImplementedError  # VendProtocol's

    def set_deadline(self, kind: str | None) -> None:
        """Set the deadline the state asks for (unchanged if its kind is the same).

        Args:
            kind: ``first`` or ``request`` (``request_head_s`` from now), ``idle``
                (``keep_alive_s`` from now), or None (no deadline).
        """
        if kind == self._deadline_kind:
            return
        self._deadline_kind = kind
        if kind is None:
            return
        seconds = self.limits.keep_alive_s if kind == "idle" else self.limits.request_head_s
        now = self.loop.time()
        self._deadline = now + seconds
        if self._timer is None:
            self._arm(now)

    def _arm(self, now: float) -> None:
        """Arm the timer at the deadline, or one tick ahead if that is sooner.

        The tick is the shorter timeout, so every later deadline falls at or after the
        armed time: a deadline is moved with two assignments, never a new timer.
        """
        tick = min(self.limits.keep_alive_s, self.limits.request_head_s)
        self._timer = self.loop.call_at(min(self._deadline, now + tick), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        kind = self._deadline_kind
        if kind is None or self.disconnected:
            return
        now = self.loop.time()
        if now < self._deadline:
            self._arm(now)
            return
        self._deadline_kind = None
        if kind == "idle":
            self._close()
        elif kind == "first":
            self.refuse(None, f"nothing sent within {self.limits.request_head_s} s")
        else:
            self.refuse(408, f"no complete request within {self.limits.request_head_s} s")
