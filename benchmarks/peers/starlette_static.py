"""Peer: Starlette's ``StaticFiles`` over all the mounts, served by uvicorn.

``StaticFiles`` looks a path up in each of ``all_directories`` in order, which is the
federation vend does; the attribute is set after construction because the constructor
takes only one directory (plus packages).

Environment:
    BENCH_MOUNTS: colon-separated absolute directories, searched in order.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

MOUNTS = [m for m in os.environ.get("BENCH_MOUNTS", "").split(":") if m]

static = StaticFiles(directory=MOUNTS[0])
static.all_directories = list(MOUNTS)

app = Starlette(routes=[Mount("/", app=static)])
