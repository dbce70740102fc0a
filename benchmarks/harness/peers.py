"""The servers compared, and how each is started on loopback with its own configuration.

Each ``Peer`` has a short ``name`` (what ``--only`` takes), a table label, the loads it
gets, and a ``start`` function (built on ``harness.launch``) that writes its configuration
under ``<work>/run/<name>/``, starts its processes pinned to the server core, waits until
the port accepts connections and returns a ``Running`` peer. The production-path peers
("tls-*") are reached over HTTPS.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from harness import configs
from harness.launch import (
    PEERS_DIR,
    Context,
    Running,
    launch,
    python_env,
    start_apache,
    start_nginx,
    start_vend_process,
    uvicorn_argv,
)
from harness.processes import free_port, stop_server

__all__ = ["PEERS", "Context", "Peer", "Running"]

ALL_SIZES: Final = ("4k", "100k", "256m")
# nginx's open_file_cache for the long-tail loads: room for every name of the default tree,
# entries checked again after vend's cache.ttl_s (2 s).
OPEN_FILE_CACHE_ENTRIES: Final = 200_000
OPEN_FILE_CACHE_INACTIVE_S: Final = 60
OPEN_FILE_CACHE_VALID_S: Final = 2
# Peers whose rows the targets read also get the load over 2,000 names.
WITH_NAMES: Final = ("4k", "4k-names", "100k", "256m")


@dataclass(frozen=True)
class Peer:
    """One server in the comparison.

    Attributes:
        name: short identifier for ``--only`` and file names.
        label: description used in the results table.
        start: starts the peer; raises RuntimeError or OSError when it cannot.
        sizes: probe keys it is loaded with.
        scheme: "http", or "https" for the production-path peers.
        serves_probe_bytes: False for a peer answering from memory (the body is checked
            for length only).
        federates: True when the peer searches all three mounts; False when it serves
            only the last one.
    """

    name: str
    label: str
    start: Callable[[Context], Running]
    sizes: tuple[str, ...] = ALL_SIZES
    scheme: Literal["http", "https"] = "http"
    serves_probe_bytes: bool = True
    federates: bool = True


def start_nginx_one_root(ctx: Context) -> Running:
    """Starts nginx serving the last mount. Returns: the running peer."""
    return start_nginx(ctx, "nginx", configs.nginx_one_root(ctx.mounts[-1]))


def start_nginx_try_files(ctx: Context) -> Running:
    """Starts nginx with ``try_files`` over the three mounts. Returns: the running peer."""
    return start_nginx(ctx, "nginx-try-files", configs.nginx_try_files(ctx.mounts))


def start_nginx_try_files_log(ctx: Context) -> Running:
    """Starts nginx with ``try_files`` and its access log on, written to a file.

    Returns:
        The running peer.
    """
    body = configs.nginx_try_files(ctx.mounts)
    return start_nginx(ctx, "nginx-try-files-log", body, access_log=True)


def open_file_cache_entries(connections: int) -> tuple[int, int]:
    """Returns how many entries nginx's open_file_cache may hold here, and the worker's
    descriptor limit: the cache keeps a descriptor open per entry, and an unprivileged
    container cannot raise the hard limit (setrlimit fails with EPERM), so the cache is
    shrunk to fit under it rather than failing opens (EMFILE: 404s).

    Args:
        connections: the loads' concurrent connections.

    Returns:
        (entries, descriptor limit): at most ``OPEN_FILE_CACHE_ENTRIES``.
    """
    spare = 4 * connections + 1024
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = OPEN_FILE_CACHE_ENTRIES + spare
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    return max(limit - spare, 1), limit


def start_nginx_try_files_ofc(ctx: Context) -> Running:
    """Starts nginx with ``try_files`` over the three mounts and ``open_file_cache``
    (``open_file_cache_entries`` entries).

    Returns:
        The running peer.
    """
    entries, open_files = open_file_cache_entries(ctx.connections)
    cache = configs.nginx_open_file_cache(
        max_entries=entries,
        inactive_s=OPEN_FILE_CACHE_INACTIVE_S,
        valid_s=OPEN_FILE_CACHE_VALID_S,
    )
    body = configs.nginx_try_files(ctx.mounts) + "\n" + cache
    return start_nginx(ctx, "nginx-try-files-ofc", body, open_files=open_files)


def start_bare_httptools(ctx: Context) -> Running:
    """Starts peers/bare_httptools.py answering from memory: the ceiling.

    Returns:
        The running peer.
    """
    port = free_port()
    argv = [str(ctx.bench_python), str(PEERS_DIR / "bare_httptools.py"), "--port", str(port)]
    for mount in ctx.mounts:
        argv += ["--root", str(mount)]
    return Running(port, [launch(ctx, "bare-httptools", argv, port, env=python_env(ctx))])


def start_apache_event(ctx: Context) -> Running:
    """Starts Apache (event MPM) serving the last mount. Returns: the running peer."""
    port = free_port()
    server = start_apache(
        ctx,
        "apache-event",
        mpm="event",
        port=port,
        modules=[],
        body=configs.apache_static(ctx.mounts[-1]),
    )
    return Running(port, [server])


def start_apache_php(ctx: Context) -> Running:
    """Starts Apache prefork + mod_php running benchmarks/peers/legacy.php.

    Returns:
        The running peer.
    """
    port = free_port()
    body = configs.apache_mod_php(PEERS_DIR / "legacy.php", ctx.mounts)
    server = start_apache(
        ctx, "apache-php", mpm="prefork", port=port, modules=configs.php_modules(), body=body
    )
    return Running(port, [server])


def start_granian(ctx: Context) -> Running:
    """Starts granian serving peers/starlette_fileresponse.py. Returns: the running peer."""
    port = free_port()
    argv = [
        ctx.bench_bin("granian"),
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--http",
        "1",
        "--no-ws",
        "--loop",
        "uvloop",
        "--log-level",
        "warning",
        "starlette_fileresponse:app",
    ]
    server = launch(ctx, "granian", argv, port, env=python_env(ctx), cwd=PEERS_DIR)
    return Running(port, [server])


def start_aiohttp(ctx: Context) -> Running:
    """Starts aiohttp's web.static over the last mount. Returns: the running peer."""
    port = free_port()
    argv = [
        str(ctx.bench_python),
        str(PEERS_DIR / "aiohttp_static.py"),
        "--port",
        str(port),
        "--root",
        str(ctx.mounts[-1]),
    ]
    return Running(port, [launch(ctx, "aiohttp", argv, port, env=python_env(ctx))])


def start_starlette_static(ctx: Context) -> Running:
    """Starts Starlette StaticFiles over the three mounts under uvicorn.

    Returns:
        The running peer.
    """
    port = free_port()
    argv = uvicorn_argv(ctx, "starlette_static:app", port)
    server = launch(ctx, "starlette-static", argv, port, env=python_env(ctx), cwd=PEERS_DIR)
    return Running(port, [server])


def start_starlette_memory(ctx: Context) -> Running:
    """Starts uvicorn + Starlette answering 4 KiB from memory. Returns: the running peer."""
    port = free_port()
    argv = uvicorn_argv(ctx, "starlette_memory:app", port)
    server = launch(ctx, "starlette-memory", argv, port, env=python_env(ctx), cwd=PEERS_DIR)
    return Running(port, [server])


def start_vend(ctx: Context) -> Running:
    """Starts ``vend serve --port P`` with only ``mounts`` set (VEND_MOUNTS).

    Returns:
        The running peer.

    Raises:
        RuntimeError: if the checkout has no .venv/bin/vend or it does not start.
    """
    port, server, _ = start_vend_process(ctx, "vend")
    return Running(port, [server])


def start_vend_log(ctx: Context) -> Running:
    """Starts ``vend serve`` as ``start_vend`` does, with its access log written to a file.

    Returns:
        The running peer.
    """
    log = ctx.run_dir("vend-log") / "access.log"
    log.unlink(missing_ok=True)
    port, server, _ = start_vend_process(ctx, "vend-log", settings={"VEND_ACCESS_LOG": str(log)})
    return Running(port, [server])


def start_tls_apache_static(ctx: Context) -> Running:
    """Starts Apache (event, TLS) serving the last mount itself. Returns: the running peer."""
    port = free_port()
    root = ctx.run_dir("tls-apache-static")
    (root / "access.log").unlink(missing_ok=True)
    server = start_apache(
        ctx,
        "tls-apache-static",
        mpm="event",
        port=port,
        modules=[],
        body=configs.apache_static(ctx.mounts[-1], access_log=root / "access.log"),
        tls=True,
    )
    return Running(port, [server])


def start_tls_apache_vend(ctx: Context) -> Running:
    """Starts vend on its Unix socket, then Apache (event) with the shipped apache/vend.conf,
    only its ``Define`` lines edited: the production path.

    Both share the server core, as they would share a host.

    Returns:
        The running peer (Apache's HTTPS port; both process groups).

    Raises:
        RuntimeError: vend or Apache did not start.
    """
    if ctx.tls is None:
        raise RuntimeError("no TLS certificate was made for the production path")
    _, vend, sock = start_vend_process(ctx, "tls-vend", unix_socket=True)
    running = Running(0, [vend])
    try:
        port = free_port()
        root = ctx.run_dir("tls-apache-vend")
        (root / "acme").mkdir(exist_ok=True)
        for log in ("vend-access.log", "vend-error.log"):
            (root / log).unlink(missing_ok=True)
        defines = configs.shipped_vhost_defines(
            https_port=port,
            http_port=free_port(),
            tls=ctx.tls,
            backend=f"unix:{sock}|http://localhost",
            log_dir=root,
            acme=root / "acme",
        )
        (root / "vend.conf").write_text(configs.render_shipped_vhost(defines))
        running.servers.append(
            start_apache(
                ctx,
                "tls-apache-vend",
                mpm="event",
                port=port,
                modules=configs.SHIPPED_VHOST_MODULES,
                body=f"{configs.DEBIAN_DEFLATE}\nInclude {root / 'vend.conf'}",
                vhost_tls=True,
            )
        )
        running.port = port
    except BaseException:
        # The caller only learns of servers through the return value: stop vend here.
        stop_server(vend, ctx.registry)
        raise
    return running


PEERS: Final = {
    peer.name: peer
    for peer in [
        Peer("nginx", "nginx, one root, sendfile", start_nginx_one_root, federates=False),
        Peer(
            "nginx-try-files",
            "nginx, try_files over three roots",
            start_nginx_try_files,
            sizes=WITH_NAMES,
        ),
        Peer(
            "nginx-try-files-log",
            "nginx, try_files, access log to a file",
            start_nginx_try_files_log,
            sizes=("4k",),
        ),
        Peer(
            "bare-httptools",
            "bare httptools + uvloop, prebuilt responses from a dict (the ceiling)",
            start_bare_httptools,
            sizes=("4k", "4k-names"),
        ),
        Peer("apache-event", "Apache event, static", start_apache_event, federates=False),
        Peer(
            "apache-php",
            "Apache prefork + mod_php loop (the design vend replaces)",
            start_apache_php,
        ),
        Peer("granian", "granian + Starlette FileResponse", start_granian),
        Peer("aiohttp", "aiohttp web.static (sendfile)", start_aiohttp, federates=False),
        Peer("starlette-static", "Starlette StaticFiles under uvicorn", start_starlette_static),
        Peer(
            "starlette-memory",
            "uvicorn + Starlette, 4 KiB from memory",
            start_starlette_memory,
            sizes=("4k",),
            serves_probe_bytes=False,
        ),
        Peer("vend", "vend serve (one worker)", start_vend, sizes=WITH_NAMES),
        Peer(
            "vend-log",
            "vend serve, access log to a file",
            start_vend_log,
            sizes=("4k",),
        ),
        Peer(
            "tls-apache-static",
            "Apache TLS serving the file itself",
            start_tls_apache_static,
            scheme="https",
            federates=False,
        ),
        Peer(
            "tls-apache-vend",
            "Apache TLS, shipped vend.conf -> vend's Unix socket (production path)",
            start_tls_apache_vend,
            scheme="https",
        ),
    ]
}
# The long-tail loads' peers (benchmarks/compare --load long-tail), in run order; the one
# with open_file_cache is theirs alone.
LONG_TAIL_PEERS: Final = {
    peer.name: peer
    for peer in [
        PEERS["nginx-try-files"],
        Peer(
            "nginx-try-files-ofc",
            "nginx, try_files + open_file_cache",
            start_nginx_try_files_ofc,
            sizes=(),
        ),
        PEERS["apache-php"],
        PEERS["vend"],
    ]
}
# Ratios in the plain table are taken to these two; the TLS table to "tls-apache-static".
NGINX_REFERENCE: Final = "nginx-try-files"
# The long-tail targets' reference (issue 17).
NGINX_OFC_REFERENCE: Final = "nginx-try-files-ofc"
LEGACY_REFERENCE: Final = "apache-php"
TLS_REFERENCE: Final = "tls-apache-static"
