"""Running vend under uvicorn with vend's own HTTP protocol.

``serve(settings)`` starts uvicorn with ``app.protocol.VendHttpToolsProtocol`` (httptools
plus zero-copy send), uvloop where installed, vend's own access log instead of uvicorn's,
no ``Server`` header, and X-Forwarded-For trusted only from ``trusted_proxies``. With
``workers > 1`` uvicorn's supervisor forks workers that share the listening socket; each
worker rebuilds the application from the validated settings passed in the environment
(``VEND_RESOLVED_SETTINGS``), so every worker serves exactly what the parent validated.
"""

from __future__ import annotations

import os
from typing import Final

import uvicorn
from uvicorn.supervisors import Multiprocess

from app.asgi import VendApp, create_app
from app.protocol import VendHttpToolsProtocol
from app.settings import Settings

SETTINGS_ENV: Final = "VEND_RESOLVED_SETTINGS"


def app_from_environment() -> VendApp:
    """uvicorn's application factory in each worker process.

    Returns:
        The application built from the settings that ``serve`` validated.

    Raises:
        KeyError: ``VEND_RESOLVED_SETTINGS`` is not set (not started by ``serve``).
    """
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    VendHttpToolsProtocol.send_timeout_s = settings.timeouts.send_s
    return create_app(settings)


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration for these settings.

    Args:
        settings: validated settings.

    Returns:
        A ``uvicorn.Config`` whose application is built by ``app_from_environment``.
    """
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    return uvicorn.Config(
        "app.serve:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        http=VendHttpToolsProtocol,
        loop="auto",
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies,
        timeout_keep_alive=max(1, round(settings.timeouts.keep_alive_s)),
        timeout_graceful_shutdown=max(1, round(settings.timeouts.graceful_shutdown_s)),
        log_level=settings.log_level,
    )


def serve(settings: Settings) -> int:
    """Serve until SIGINT or SIGTERM.

    Args:
        settings: validated settings.

    Returns:
        The process exit status: 0 after a clean shutdown, 3 when the server could not
        start (the address is in use, for example), as uvicorn reports it.
    """
    config = uvicorn_config(settings)
    if settings.workers > 1:
        sock = config.bind_socket()
        Multiprocess(config, sockets=[sock]).run()
        return 0
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 3
