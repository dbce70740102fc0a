"""Content-Type from a file name's extension (RFC 9110 section 8.3).

The table is Python's built-in one (never the machine's ``/etc/mime.types``, so every vend
host answers alike), corrected and extended for the web, then the operator's
``mime_types`` setting on top. Compressed files keep their own type and are never given a
Content-Encoding: the client asked for the file, not for its contents.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from typing import Final

DEFAULT_MEDIA_TYPE: Final = "application/octet-stream"

_WEB_TYPES: Final[dict[str, str]] = {
    ".js": "text/javascript",  # RFC 9239
    ".mjs": "text/javascript",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".bz2": "application/x-bzip2",
    ".xz": "application/x-xz",
    ".zst": "application/zstd",
    ".br": "application/octet-stream",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".md": "text/markdown",
}


class MediaTypes:
    """Maps file names to media types.

    Args:
        extra: operator additions, extension (with its dot) to media type; they win.
    """

    def __init__(self, extra: Mapping[str, str] | None = None) -> None:
        table = dict(mimetypes.MimeTypes(filenames=()).types_map[True])
        table.update(_WEB_TYPES)
        table.update({ext.lower(): value for ext, value in (extra or {}).items()})
        self._table = table

    def for_name(self, name: str) -> str:
        """The media type of a file name.

        Args:
            name: a file name or relative path.

        Returns:
            The media type of its last extension (case-insensitive), or
            ``application/octet-stream`` when unknown.
        """
        base = name.rpartition("/")[2]
        dot = base.rfind(".")
        if dot <= 0:
            return DEFAULT_MEDIA_TYPE
        return self._table.get(base[dot:].lower(), DEFAULT_MEDIA_TYPE)
