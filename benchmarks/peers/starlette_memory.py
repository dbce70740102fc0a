"""Peer: uvicorn + Starlette answering every path with 4 KiB held in memory.

No filesystem work at all: this is the ceiling that Starlette's routing and response
machinery allow on the machine, the reference vend's hot path is measured against.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY_BYTES = 4096
BODY = bytes(range(256)) * (BODY_BYTES // 256)


async def serve_memory(request: Request) -> Response:
    """Answers any path with the same 4 KiB body.

    Args:
        request: the incoming request (ignored).

    Returns:
        A 200 response of ``BODY_BYTES`` bytes, ``application/octet-stream``.
    """
    return Response(BODY, media_type="application/octet-stream")


app = Starlette(routes=[Route("/{name:path}", serve_memory)])
