"""What the ASGI application and vend's server both need: extension keys and errors.

This module imports nothing of vend's, so that neither side imports the other.

- ``ZEROCOPY``: the ASGI zero-copy send extension (``http.response.zerocopysend``),
  which vend's server offers in ``scope["extensions"]`` and carries out with sendfile(2).
- ``UNSENT_KEY``: a scope key the server sets to the body bytes a zero-copy send
  promised but could not send (the connection was aborted), so the access log and the
  metrics count only bytes really sent.
- ``ShortFileError``: a file ended before the bytes already promised in Content-Length.
"""

from __future__ import annotations

from typing import Final

ZEROCOPY: Final = "http.response.zerocopysend"
UNSENT_KEY: Final = "vend.unsent_bytes"
"""Scope key: body bytes a zero-copy send promised but could not send (connection aborted)."""


class ShortFileError(OSError):
    """The file ended before the promised number of bytes: it shrank while being sent."""
