"""What the ASGI application and vend's server both need: extension keys and errors.

This module imports nothing of vend's, so that neither side imports the other.

- ``ZEROCOPY``: the ASGI zero-copy send extension (``http.response.zerocopysend``),
  which vend's server offers in ``scope["extensions"]`` and carries out with sendfile(2).
- ``UNSENT_KEY``: a scope key the server sets to the body bytes a zero-copy send
  promised but could not send (the connection was aborted), so the access log and the
  metrics count only bytes really sent.
- ``FOUND_KEY``: a scope key the server sets when its cold path (``app.server.dispatch``)
  has already looked the request's name up (``VendApp.look_up``): the application answers
  from that verdict instead of looking the name up again, and closes the open file it may
  hold; a request dropped before it runs has it closed by the server (``close_found``).
- ``ShortFileError``: a file ended before the bytes already promised in Content-Length.
"""

from __future__ import annotations

from typing import Final

ZEROCOPY: Final = "http.response.zerocopysend"
UNSENT_KEY: Final = "vend.unsent_bytes"
"""Scope key: body bytes a zero-copy send promised but could not send (connection aborted)."""

FOUND_KEY: Final = "vend.found"
"""Scope key: the verdict of the lookup the server's cold path made for this request."""


def close_verdict(verdict: object) -> None:
    """Close the open file a lookup's verdict holds, if it holds one.

    Args:
        verdict: a verdict (``VendApp.look_up``), or None.
    """
    close = getattr(verdict, "close", None)
    if close is not None:
        close()


def close_found(scope: dict[str, object]) -> None:
    """Close the open file a dropped request's verdict holds (``FOUND_KEY``), if any.

    Args:
        scope: the request's ASGI scope; its ``FOUND_KEY`` entry is removed.
    """
    close_verdict(scope.pop(FOUND_KEY, None))


class ShortFileError(OSError):
    """The file ended before the promised number of bytes: it shrank while being sent."""
