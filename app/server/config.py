"""vend's uvicorn configuration, and the application factory each worker process runs.

``uvicorn_config(settings)`` is what ``vend serve`` hands uvicorn: vend's own HTTP/1.1
protocol class (``app.server.connection``) with its limits, uvloop where installed,
vend's access log instead of uvicorn's, no ``Server`` header, uvicorn's proxy headers off
(``app.server.forwarded`` applies X-Forwarded-For), and ``app_from_environment`` as the
application factory. The settings travel in the environment (``VEND_RESOLVED_SETTINGS``,
``VEND_SETTINGS_SOURCES``; see ``app.server.serve``), so a worker process started by the
supervisor (``app.server.workers``) builds the same configuration with
``worker_config``. This module imports neither of those two, which sit above it.
"""

from __future__ import annotations

import json
import logging
import os
import resource
from collections.abc import Callable
from typing import Any, Final

import uvicorn

from app.asgi import create_app
from app.logs import log_config
from app.server.connection import protocol_class
from app.server.forwarded import ForwardedHeaders, ProxyTrust
from app.server.limits import ProtocolLimits, default_max_connections
from app.settings import Settings, SettingsError
from app.settings_load import load_settings
from app.types import ASGIApp

log = logging.getLogger("vend.serve")

SETTINGS_ENV: Final = "VEND_RESOLVED_SETTINGS"
SOURCES_ENV: Final = "VEND_SETTINGS_SOURCES"


def settings_sources() -> tuple[str | None, dict[str, Any]] | None:
    """Where this process's settings came from, as ``serve`` put it in the environment.

    Returns:
        ``(config file or None, command-line overrides)``, or None when
        ``VEND_SETTINGS_SOURCES`` is not set.
    """
    raw = os.environ.get(SOURCES_ENV)
    if not raw:
        return None
    data = json.loads(raw)
    return data["config_file"], data["overrides"]


def settings_reader(sources: tuple[str | None, dict[str, Any]]) -> Callable[[], Settings]:
    """A function that reads the settings anew from ``sources`` (for SIGHUP).

    Args:
        sources: what ``settings_sources`` returned.

    Returns:
        A callable returning the settings; it raises ``SettingsError`` when they do not
        validate.
    """
    config_file, overrides = sources
    return lambda: load_settings(config_file, serving=True, **overrides)


def app_from_environment() -> ASGIApp:
    """uvicorn's application factory in each worker process.

    Returns:
        The application, built from its settings' sources when they load (a worker
        started after a reload sees the new settings), else from the settings ``serve``
        validated; X-Forwarded-For is applied by ``app.server.forwarded``'s rule.

    Raises:
        KeyError: ``VEND_RESOLVED_SETTINGS`` is not set (not started by ``serve``).
    """
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    sources = settings_sources()
    reload_settings = settings_reader(sources) if sources else None
    if reload_settings is not None:
        try:
            settings = reload_settings()
        except SettingsError as exc:
            log.error("settings refused, keeping the last valid ones: %s", exc)
    trust = ProxyTrust(settings.trusted_proxies, unix_listener=bool(settings.unix_socket))
    return ForwardedHeaders(create_app(settings, reload_settings), trust)


def worker_config() -> uvicorn.Config:
    """The uvicorn configuration in a worker process started by ``serve``.

    Returns:
        ``uvicorn_config`` of the settings and sources ``serve`` put in the environment.

    Raises:
        KeyError: ``VEND_RESOLVED_SETTINGS`` is not set (not started by ``serve``).
    """
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    config_file, overrides = settings_sources() or (None, {})
    return uvicorn_config(settings, config_file, overrides)


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
        "app.server.config:app_from_environment",
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
                max_connections=settings.limits.max_connections
                or default_max_connections(
                    resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                    len(settings.mounts),
                    settings.threads_per_mount,
                ),
            )
        ),
        loop="auto",
        lifespan="on",
        access_log=False,
        server_header=False,
        # X-Forwarded-For is vend's own (app.server.forwarded): uvicorn's never trusts a
        # peer on a Unix socket.
        proxy_headers=False,
        timeout_keep_alive=max(1, round(settings.timeouts.keep_alive_s)),
        timeout_graceful_shutdown=max(1, round(settings.timeouts.graceful_shutdown_s)),
        log_level=settings.log_level,
        log_config=log_config(settings.log_level),
    )
