"""Peer: a Starlette app that federates the mounts itself and answers with FileResponse.

Served by granian in benchmarks/compare. The handler is what a developer writes first:
a catch-all route that checks each mount in order with ``os.path.isfile`` (on the event
loop) and hands the first hit to Starlette's ``FileResponse``, which stats, opens and
reads the file through worker threads.

Environment:
    BENCH_MOUNTS: colon-separated absolute directories, searched in order.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

MOUNTS = [m for m in os.environ.get("BENCH_MOUNTS", "").split(":") if m]


async def serve_file(request: Request) -> Response:
    """Answers the first mount's regular file named by the path, or 404.

    Args:
        request: the incoming request; ``path`` holds the relative name.

    Returns:
        A ``FileResponse`` for the first mount holding the name, else a 404 response.
    """
    name = request.path_params["name"]
    if ".." in name.split("/"):
        return PlainTextResponse("Not Found", status_code=404)
    for mount in MOUNTS:
        candidate = os.path.join(mount, name)
        if os.path.isfile(candidate):
            return FileResponse(candidate)
    return PlainTextResponse("Not Found", status_code=404)


app = Starlette(routes=[Route("/{name:path}", serve_file)])
