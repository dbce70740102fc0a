"""Where a complete request goes: the hot path, or the ASGI application.

``RequestDispatch`` is the part of ``VendProtocol`` (``app.server.connection``) that
takes a request the reader completed (``app.server.framing``) and answers it from the
cache below ASGI when it can (``app.server.hotpath``), looks its name up below ASGI
when the cache does not hold it (``app.server.cold``), else queues an ``AsgiCycle``
(``app.server.writer``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from app.federation.cache import CachedFile
from app.server.cold import ColdRequest
from app.server.hotpath import HotPath, KnownHead
from app.server.limits import ProtocolMixin
from app.server.writer import AsgiCycle, make_scope


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
    _active: AsgiCycle | ColdRequest | None
    _queue: deque[Any]

    def _emit(self, entry: AsgiCycle | ColdRequest | bytes, keep_alive: bool) -> None:
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
        to_app: bool,
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
            to_app: a field (Range, a precondition but If-None-Match) or a body sends
                it to the application.
            fast_data: the read that held exactly this head, or None.
        """
        hot = self.hot
        if (
            hot is not None
            and not to_app
            and (method == b"GET" or method == b"HEAD")
            and not hot.app.draining
        ):
            found = hot.find(url)
            if isinstance(found, str):  # not fresh in the cache: look it up below ASGI
                request = ColdRequest(
                    self,  # type: ignore[arg-type]
                    (method, url, http10, keep_alive, inm, headers),
                    self._client,
                )
                self._emit(request, keep_alive)
                hot.search(found, request)
                return
            if found is not None:
                known = (method, url, http10, keep_alive, inm, headers)
                self._emit(hot.reply(found, known, keep_alive, self._client), keep_alive)
                if fast_data is not None and isinstance(found, CachedFile):
                    hot.remember(fast_data, known)
                return
        self._emit(self.make_cycle(method, url, headers, http10, keep_alive), keep_alive)

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
        entry = hot.lookup(known[1])
        if entry is None:
            return False
        self.transport.write(hot.reply(entry, known, known[3], self._client))
        return True

    def make_cycle(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        http10: bool,
        keep_alive: bool,
    ) -> AsgiCycle:
        """The request in a cycle ready to run through the application.

        Args: as ``dispatch``'s.

        Returns:
            The cycle, not started (the answer queue starts it in its turn).
        """
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
