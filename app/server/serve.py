"""Running vend under uvicorn with vend's own HTTP protocol.

``serve(settings)`` starts uvicorn with vend's own HTTP/1.1 protocol
(``app.server.connection``: httptools, ordered answers, the hot path, zero-copy send),
uvloop where installed, vend's own access log instead of uvicorn's,
no ``Server`` header, and X-Forwarded-For trusted only from ``trusted_proxies``. With
``workers > 1`` uvicorn's supervisor forks workers that share the listening socket.

Settings reach the application (in each worker) two ways, both in the environment:
``VEND_RESOLVED_SETTINGS``, the settings the parent validated, and
``VEND_SETTINGS_SOURCES``, where they came from (the config file and the command-line
overrides), to read them anew. SIGHUP re-reads the sources: with one worker the running
application switches in place (``VendApp.reload``); with several, uvicorn's supervisor
restarts the workers one by one and each reads the sources as it starts. Invalid new
settings are refused with a logged error and the last valid ones stay in force.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, Final

import uvicorn
from uvicorn.supervisors import Multiprocess

from app.asgi import VendApp, create_app
from app.ops.metrics import MULTIPROC_ENV
from app.server.connection import protocol_class
from app.server.limits import ProtocolLimits
from app.settings import Settings, SettingsError, load_settings

SETTINGS_ENV: Final = "VEND_RESOLVED_SETTINGS"
SOURCES_ENV: Final = "VEND_SETTINGS_SOURCES"

log = logging.getLogger("vend.serve")


def _sources() -> tuple[str | None, dict[str, Any]] | None:
    raw = os.environ.get(SOURCES_ENV)
    if not raw:
        return None
    data = json.loads(raw)
    return data["config_file"], data["overrides"]


def _reader(sources: tuple[str | None, dict[str, Any]]) -> Callable[[], Settings]:
    config_file, overrides = sources
    return lambda: load_settings(config_file, **overrides)


def app_from_environment() -> VendApp:
    """uvicorn's application factory in each worker process.

    Returns:
        The application, built from its settings' sources when they load (a worker
        restarted by SIGHUP sees the new settings), else from the settings ``serve``
        validated.

    Raises:
        KeyError: ``VEND_RESOLVED_SETTINGS`` is not set (not started by ``serve``).
    """
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    sources = _sources()
    reload_settings = _reader(sources) if sources else None
    if reload_settings is not None:
        try:
            settings = reload_settings()
        except SettingsError as exc:
            log.error("settings refused, keeping the last valid ones: %s", exc)
    return create_app(settings, reload_settings)


def uvicorn_config(
    settings: Settings, config_file: str | None = None, overrides: dict[str, Any] | None = None
) -> uvicorn.Config:
    """The uvicorn configuration for these settings.

    Args:
        settings: validated settings.
        config_file: the TOML file they came from, for SIGHUP, or None.
        overrides: the command-line values among them, for SIGHUP.

    Returns:
        A ``uvicorn.Config`` whose application is built by ``app_from_environment``.
    """
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    os.environ[SOURCES_ENV] = json.dumps({"config_file": config_file, "overrides": overrides or {}})
    return uvicorn.Config(
        "app.server.serve:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        # A callable constructing the protocol, as uvicorn uses it (its annotation says
        # a class; a partial pickles to worker processes where a made-up class cannot).
        http=protocol_class(  # type: ignore[arg-type]
            ProtocolLimits(
                request_head_s=settings.timeouts.request_head_s,
                keep_alive_s=settings.timeouts.keep_alive_s,
                send_s=settings.timeouts.send_s,
            )
        ),
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


def serve(
    settings: Settings, config_file: str | None = None, overrides: dict[str, Any] | None = None
) -> int:
    """Serve until SIGINT or SIGTERM; SIGHUP re-reads the settings.

    Args:
        settings: validated settings.
        config_file: the TOML file they came from, or None.
        overrides: the command-line values among them.

    Returns:
        The process exit status: 0 after a clean shutdown, 3 when the server could not
        start (the address is in use, for example), as uvicorn reports it.
    """
    config = uvicorn_config(settings, config_file, overrides)
    if settings.workers > 1:
        # Workers write their metrics here; set before they start (prometheus-client
        # picks its mode when imported). Removed with the process's private /tmp or
        # below when vend stops.
        metrics_dir = tempfile.mkdtemp(prefix="vend-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
        try:
            sock = config.bind_socket()
            Multiprocess(config, sockets=[sock]).run()
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 0
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 3
