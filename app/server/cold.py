"""The cold path: a request the hot path could answer, but for the cache.

Most old links name a file that no cache holds: each is asked far less often than
``cache.ttl_s``, and there are many more of them than ``cache.max_entries``. A GET or
HEAD that the hot path (``app.server.hotpath``) would answer if its small file were
cached becomes a ``ColdRequest``: its name is looked up at once (``HotPath.search``,
then ``VendApp.look_up``: the mounts' batched lookups, ``app.federation.batch``), with
every other request asking for the same name meanwhile, and its place in the
connection's answer queue (``app.server.answers``) waits for the verdict. Then:

- a small file, now fresh in the cache: the hot path's own answer (the same bytes,
  from the same ``Prebuilt``), written without an ASGI scope or task;
- a miss that the redirect map does not list: the application's 404, from bytes
  built here (``HotPath.reply``);
- anything else (a large file, a directory's redirect, 301 from the redirect map, 403,
  503, or the application draining): the request runs through the application as any
  other, which answers from the verdict under ``FOUND_KEY`` instead of looking the name
  up again.

Whatever the answer, it is the one the application would have given: the cache and the
name memory are filled by the application's own code (``VendApp.look_up``), and the
answers come from the bytes the hot path builds from them (``tests/unit/test_hotpath.py``
holds the paths to the same bytes).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from app.contract import FOUND_KEY, close_found
from app.server.writer import AsgiCycle

if TYPE_CHECKING:
    from app.server.connection import VendProtocol
    from app.server.hotpath import KnownHead


class ColdRequest:
    """One request waiting in the answer queue for the lookup of its name.

    Args:
        conn: the connection.
        known: the request (method, target, HTTP/1.0, keep-alive, If-None-Match,
            fields).
        peer: the connection's peer address.

    Attributes:
        keep_alive: whether the connection stays open after this answer (cleared by a
            shutdown while it waits).
        answer: None while the lookup runs; then the answer's bytes with its
            keep-alive, or the ``AsgiCycle`` that answers it.
        dropped: the connection went away (or closed) before the answer: ignored.
        looks_up: the lookup is this request's own (counted as a cache miss); the
            others asking meanwhile wait for it and are answered from the cache (hits).
    """

    __slots__ = (
        "_conn",
        "_peer",
        "answer",
        "dropped",
        "keep_alive",
        "known",
        "looks_up",
        "started",
    )

    def __init__(self, conn: VendProtocol, known: KnownHead, peer: tuple[str, int] | None) -> None:
        self._conn = conn
        self._peer = peer
        self.known = known
        self.keep_alive = known[3]
        self.started = time.perf_counter()
        self.answer: tuple[bytes, bool] | AsgiCycle | None = None
        self.dropped = False
        self.looks_up = False

    def looked_up(self, verdict: object) -> bool:
        """The lookup is done and its verdict cached: make the answer, write it if first.

        Args:
            verdict: the lookup's verdict (``VendApp.look_up``), or None when another
                request took it (or the lookup was cancelled).

        Returns:
            True when this request took ``verdict`` (its cycle answers from it and
            closes the file it may hold).
        """
        conn = self._conn
        if self.dropped or conn.disconnected or conn.transport.is_closing():
            return False
        hot = conn.hot
        assert hot is not None
        method, url, http10, _, _, headers = self.known
        found = None if hot.app.draining else hot.find(url)
        taken = False
        if found is not None and not isinstance(found, str):
            data = hot.reply(
                found, self.known, self.keep_alive, self._peer, self.started, self.looks_up
            )
            self.answer = (data, self.keep_alive)
        else:
            cycle = conn.make_cycle(method, url, headers, http10, self.keep_alive)
            if verdict is not None:
                cycle.scope[FOUND_KEY] = verdict
                taken = True
            self.answer = cycle
        conn.cold_answered(self)
        return taken

    def drop(self) -> None:
        """The connection is gone or closing: answer nothing, close what a cycle holds."""
        self.dropped = True
        if isinstance(self.answer, AsgiCycle):
            close_found(self.answer.scope)
