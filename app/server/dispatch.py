"""Where a complete request goes: the hot path, or the ASGI application.

``RequestDispatch`` is the part of ``VendProtocol`` (``app.server.connection``) that
takes a request the reader completed (``app.server.framing``) and answers it from the
cache below ASGI when it can (``app.server.hotpath``), else queues an ``AsgiCycle``
(``app.server.writer``). A name not fresh in the cache (never asked, or gone stale) is
looked up by one request; the others asking for it meanwhile wait for that lookup and
are then answered from the cache, instead of all looking it up (each reading its own
copy of a small file) at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from app.server.hotpath import HotPath, KnownHead
from app.server.limits import ProtocolMixin
from app.server.writer import CLOSE, KEEP_ALIVE, AsgiCycle, make_scope


class RequestDispatch(ProtocolMixin):
    """Mixin of ``VendProtocol``: answer complete requests (see the module docstring)."""

    hot: HotPath | None
    config: Config
    app_state: dict[str, Any]
    server_state: ServerState
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    disconnected: bool
    _served: int
    _server: tuple[str, int | None] | None
    _client: tuple[str, int] | None
    _scheme: str
    _active: AsgiCycle | None
    _queue: deque[Any]

    def _emit(self, entry: AsgiCycle | bytes, keep_alive: bool) -> None:
        raise NotImplementedError  # VendProtocol's

    def _close(self) -> None:
        raise NotImplementedError  # VendProtocol's

    def dispatch(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        http10: bool,
        keep_alive: bool,
        inm: bytes | None,
        cold: bool,
        fast_data: bytes | None,
    ) -> None:
        """A request is complete: answer it on the hot path, or queue it for the app.

        Args:
            method: the method.
            url: the request-target (origin-form).
            headers: the fields, lower-case names.
            http10: the request is HTTP/1.0.
            keep_alive: the connection stays open after the answer.
            inm: If-None-Match (repeated fields joined), or None.
            cold: a field or a body sends it to the application.
            fast_data: the read that held exactly this head, or None.
        """
        hot = self.hot
        if (
            hot is not None
            and not cold
            and (method == b"GET" or method == b"HEAD")
            and not hot.app.draining
        ):
            entry = hot.lookup(url)
            if entry is not None:
                connection = (KEEP_ALIVE if http10 else b"") if keep_alive else CLOSE
                data, status, sent = hot.answer(entry, method == b"HEAD", inm, connection)
                self._emit(data, keep_alive)
                hot.count(entry, status, sent, self._client, method, url, http10, headers)
                if fast_data is not None:
                    hot.remember(fast_data, (method, url, http10, keep_alive, inm, headers))
                return
            # Not fresh in the cache (never asked, or gone stale): one request looks it up,
            # the others asking meanwhile wait for that lookup. Each lookup of a small file
            # reads its own copy of the body, so 256 connections starting on a 100 KiB file
            # at once would otherwise hold 256 copies (and their answers) together.
            cycle = self._make_cycle(method, url, headers, http10, keep_alive)
            waiting = hot.refreshing.get(url)
            if waiting is None:
                # Only a request that starts at once looks it up for the others: one
                # queued behind an answer its client does not read would hold them.
                if self._active is None and not self._queue:
                    cycle.refresh = (hot, url)
                    hot.refreshing[url] = self.loop.create_future()
            else:
                cycle.after_refresh = (waiting, (method, url, http10, keep_alive, inm, headers))
            self._emit(cycle, keep_alive)
            return
        self._emit(self._make_cycle(method, url, headers, http10, keep_alive), keep_alive)

    def _answer_known(self, known: KnownHead) -> bool:
        """Answer a head whose exact bytes the parser accepted before, on the hot path.

        Parsing is a function of the bytes alone, so a head seen before (see
        ``HotPath.remember``) needs no parser: its request is answered as it was then,
        if its file is still fresh in the cache. The state goes from IDLE to IDLE.

        Args:
            known: what the head was found to ask.

        Returns:
            True when answered; False: feed it to the parser as usual.
        """
        keep_alive = known[3]
        if not self.answer_from_cache(known):
            return False
        self._served += 1
        self.server_state.total_requests += 1
        if not keep_alive:
            self._close()
        return True

    def answer_from_cache(self, known: KnownHead) -> bool:
        """Write the hot path's answer to a request, if its file is fresh in the cache.

        Args:
            known: the request (method, target, HTTP/1.0, keep-alive, If-None-Match,
                fields).

        Returns:
            True when answered (written, counted and logged).
        """
        hot = self.hot
        if hot is None or self.disconnected or hot.app.draining:
            return False
        method, url, http10, keep_alive, inm, headers = known
        entry = hot.lookup(url)
        if entry is None:
            return False
        connection = (KEEP_ALIVE if http10 else b"") if keep_alive else CLOSE
        data, status, sent = hot.answer(entry, method == b"HEAD", inm, connection)
        self.transport.write(data)
        hot.count(entry, status, sent, self._client, method, url, http10, headers)
        return True

    def _make_cycle(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        http10: bool,
        keep_alive: bool,
    ) -> AsgiCycle:
        """The request in a cycle ready to run through the application."""
        scope = make_scope(
            method,
            url,
            headers,
            http10=http10,
            server=self._server,
            client=self._client,
            scheme=self._scheme,
            root_path=self.config.root_path,
            state=self.app_state.copy(),
        )
        return AsgiCycle(self, scope, keep_alive, http10 and keep_alive)  # type: ignore[arg-type]
