"""Running vend under uvicorn with vend's own HTTP protocol.

``serve(settings)`` starts uvicorn with vend's own HTTP/1.1 protocol
(``app.server.connection``: httptools, ordered answers, the hot path, zero-copy send),
uvloop where installed, vend's own access log instead of uvicorn's, no ``Server``
header, and X-Forwarded-For trusted only from ``trusted_proxies``
(``app.server.forwarded``). It listens on ``host:port``, or on the Unix socket named by
``unix_socket`` (``app.server.listen``). With ``workers > 1`` this process binds the
listening socket and vend's supervisor (``app.server.workers``) runs that many worker
processes on it, each a ``uvicorn.Server``.

Settings reach the application (in each worker) two ways, both in the environment:
``VEND_RESOLVED_SETTINGS``, the settings the parent validated, and
``VEND_SETTINGS_SOURCES``, where they came from (the config file and the command-line
overrides), to read them anew. SIGHUP re-reads the sources and the running application
switches in place (``VendApp.reload``): with one worker in this process, with several in
every worker (the supervisor forwards the signal), so no worker is replaced, no
connection is closed and what each worker remembers stays. A worker started later (to
replace one that died) reads the sources as it starts. Invalid new settings are refused
with a logged error and the last valid ones stay in force.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from app.federation.exhaustion import raise_descriptor_limit
from app.ops.metrics import MULTIPROC_ENV
from app.server.config import (
    SETTINGS_ENV,
    app_from_environment,
    settings_reader,
    settings_sources,
    uvicorn_config,
)
from app.server.listen import bind_tcp, bind_unix
from app.server.workers import STOP_MARGIN_S, Supervisor
from app.settings import Settings

log = logging.getLogger("vend.serve")

__all__ = ["app_from_environment", "listening_socket", "listening_sockets", "serve"]
"""``app_from_environment`` lives in ``app.server.config``; it is named here too, for
the ``app.server.serve:app_from_environment`` factory string run by plain uvicorn."""


def listening_socket(settings: Settings) -> socket.socket | None:
    """The Unix socket to serve on, when the ``unix_socket`` setting names one.

    Args:
        settings: validated settings.

    Returns:
        The bound, listening socket (mode 0660), or None to listen on ``host:port``
        (uvicorn binds it).

    Raises:
        ListenError: the path is in use, is not a socket, or cannot be bound.
    """
    if not settings.unix_socket:
        return None
    return bind_unix(Path(settings.unix_socket))


def serve(
    settings: Settings,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    on_listening: Callable[[], None] | None = None,
) -> int:
    """Serve until SIGINT or SIGTERM; SIGHUP re-reads the settings.

    First the soft ``RLIMIT_NOFILE`` is raised to the hard limit (logged), so that
    descriptors run out as late as the host allows (``app.federation.exhaustion``).

    Args:
        settings: validated settings.
        config_file: the TOML file they came from, or None.
        overrides: the command-line values among them.
        on_listening: called once the listening socket is bound, before serving (the
            CLI says "serving ... on ..." only then, never for a port it could not bind).

    Returns:
        The process exit status: 0 after a clean shutdown, 3 when the server could not
        start after binding (its application failed to start, as uvicorn reports it).

    Raises:
        ListenError: the address cannot be bound (in use, a host name that does not
            resolve, no permission, an unusable socket path); nothing has been served.
    """
    config = uvicorn_config(settings, config_file, overrides)
    # Bound now, so the port is known to be ours before anything says "serving". A
    # single server listens only once its application has started (uvicorn's order:
    # a client that can connect gets answered); a supervisor listens at once, so
    # connections queue while a worker starts or is replaced.
    unix = listening_socket(settings)
    if unix is not None:
        sockets = [unix]
    elif settings.workers > 1:
        sockets = listening_sockets(config)
    else:
        sockets = [bind_tcp(config.host, config.port)]
    # Headroom before serving: the soft descriptor limit (often 1,024) up to the hard
    # one (logged; after binding, so that a start failure stays one line).
    raise_descriptor_limit()
    if on_listening is not None:
        on_listening()
    try:
        if settings.workers > 1:
            return _serve_workers(settings, sockets)
        server = uvicorn.Server(config)
        server.run(sockets=sockets)
        return 0 if server.started else 3
    finally:
        for sock in sockets:
            sock.close()


def listening_sockets(config: uvicorn.Config) -> list[socket.socket]:
    """Bind and listen on the sockets every worker serves (before any worker starts).

    Args:
        config: the uvicorn configuration (its host, port and backlog).

    Returns:
        The listening sockets, inheritable by the workers.

    Raises:
        ListenError: the address cannot be bound.
    """
    sock = bind_tcp(config.host, config.port)
    # Listening at once: connections queue while a worker starts or is replaced.
    sock.listen(config.backlog)
    return [sock]


def _remember_settings() -> None:
    """On SIGHUP, keep the settings the workers switch to for workers started later.

    A worker started later reads the sources itself, and falls back to these when the
    sources have since become invalid (the running workers refused them too).
    """
    sources = settings_sources()
    if sources is None:
        return
    try:
        settings = settings_reader(sources)()
    except Exception:  # every worker logs why; the supervisor must not stop over it
        return
    os.environ[SETTINGS_ENV] = settings.model_dump_json()


def _serve_workers(settings: Settings, sockets: list[socket.socket]) -> int:
    """``serve`` with ``settings.workers`` processes under vend's supervisor."""
    # Workers write their metrics here; set before they start (prometheus-client
    # picks its mode when imported). Removed with the process's private /tmp or
    # below when vend stops.
    metrics_dir = tempfile.mkdtemp(prefix="vend-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    timeouts = settings.timeouts
    supervisor = Supervisor(
        workers=settings.workers,
        sockets=sockets,
        stop_timeout_s=timeouts.drain_s + timeouts.graceful_shutdown_s + STOP_MARGIN_S,
        on_reload=_remember_settings,
    )
    try:
        return supervisor.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
