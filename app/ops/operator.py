"""Operator endpoints under ``/.well-known/vend/``: health and metrics (Starlette).

``GET /.well-known/vend/health`` answers JSON::

    {"status": "ok", "mounts": [{"name": "server1", "state": "up", "last_error": null,
                                 "latency_ms": 0.2, "deadline_ms": 200.0}, ...]}

(``state``: ``up``, ``overdue`` or ``down``, see ``app.federation.pace``) with 200 when
at least one mount is usable (up or overdue) and 503 (``"status": "unavailable"``) when none
is, or (``"status": "draining"``) while vend drains after SIGTERM. It names mounts,
never filesystem paths. ``GET /.well-known/vend/metrics`` answers Prometheus' text format.
``GET /.well-known/vend/misses`` answers the names most often answered 404, 403 or 503
since start, and the 400s per refusing rule, as JSON (``app.ops.misses``).
The Apache vhost keeps this prefix off the public side.

Health also carries ``"process": {"pid": 4242, "reloads": 1}``: which worker answered
(its process id) and how many settings reloads it has taken in place (SIGHUP) since it
started, and ``"version"``: vend's version (``vend --version``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import __version__
from app.federation.health import describe
from app.federation.mount import Mount
from app.ops.metrics import Metrics
from app.ops.misses import SharedMisses


class OperatorView(Protocol):
    """What the operator endpoints read of the application (``app.asgi.VendApp`` is one).

    Attributes:
        mounts: the mounts now configured, in priority order.
        draining: the application stops taking requests (SIGTERM).
        reloads: settings reloads since start.
        misses: the 404s and refusals counted, rendered as JSON.
        metrics: the Prometheus metrics, rendered in the text format.
    """

    @property
    def mounts(self) -> Sequence[Mount]: ...

    @property
    def draining(self) -> bool: ...

    @property
    def reloads(self) -> int: ...

    @property
    def misses(self) -> SharedMisses: ...

    @property
    def metrics(self) -> Metrics: ...


def create_operator_app(vend: OperatorView) -> Starlette:
    """Build the operator endpoints of one vend application.

    Args:
        vend: the application whose mounts and metrics are reported.

    Returns:
        A Starlette application routing ``/.well-known/vend/health`` and ``.../metrics``;
        other paths under the prefix are 404, other methods 405.
    """

    async def health(request: Request) -> Response:
        """Mount states as JSON; 200 while serving is possible, else 503 (no-store)."""
        mounts = [describe(mount) for mount in vend.mounts]
        usable = any(m["state"] != "down" for m in mounts) and not vend.draining
        status = "draining" if vend.draining else "ok" if usable else "unavailable"
        body = {
            "status": status,
            "mounts": mounts,
            "process": {"pid": os.getpid(), "reloads": vend.reloads},
            "version": __version__,
        }
        return JSONResponse(
            body, status_code=200 if usable else 503, headers={"cache-control": "no-store"}
        )

    async def misses(request: Request) -> Response:
        """The most frequent 404/403/503 names and 400s per rule, as JSON (no-store)."""
        body = await run_in_threadpool(vend.misses.render)
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def metrics(request: Request) -> Response:
        """All metrics in Prometheus' text exposition format (version 0.0.4)."""
        return Response(vend.metrics.render(), media_type=vend.metrics.content_type)

    return Starlette(
        routes=[
            Route("/.well-known/vend/health", health, methods=["GET", "HEAD"]),
            Route("/.well-known/vend/metrics", metrics, methods=["GET", "HEAD"]),
            Route("/.well-known/vend/misses", misses, methods=["GET", "HEAD"]),
        ]
    )
