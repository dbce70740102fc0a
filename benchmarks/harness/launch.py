"""How a peer is started: its run directory, process group, core and control group, and
the shared steps of the nginx, Apache, Python and vend peers (``harness.peers`` lists them).

Every start function writes its configuration under ``<work>/run/<name>/``, starts its
processes pinned to the server core, and waits until the port (or vend's Unix socket)
accepts connections.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from harness import configs
from harness.cgroups import CpuCgroups
from harness.processes import (
    Registry,
    ServerProcess,
    free_port,
    start_server,
    stop_server,
    wait_for_port,
    wait_for_settled_group,
    wait_for_unix_socket,
)

PEERS_DIR: Final = Path(__file__).resolve().parent.parent / "peers"


@dataclass(frozen=True)
class Context:
    """What every peer's start function needs.

    Attributes:
        repo: the vend checkout (holds .venv/bin/vend).
        work_dir: benchmarks/work (run files and logs go to ``work_dir/run``).
        mounts: the three mount directories, in search order.
        bench_python: the Python of the benchmark venv (peers' packages).
        registry: where started process groups are recorded.
        server_cpu: the core servers are pinned to.
        connections: concurrent connections the loads open (servers are sized for them).
        cgroups: makes the control group each server's CPU time is counted in.
        tls: certificate and key for the HTTPS peers, or None when none is needed.
    """

    repo: Path
    work_dir: Path
    mounts: list[Path]
    bench_python: Path
    registry: Registry
    server_cpu: int
    connections: int
    cgroups: CpuCgroups
    tls: configs.TlsFiles | None = None

    @property
    def is_root(self) -> bool:
        """Whether the harness runs as root (servers then drop to www-data)."""
        return os.geteuid() == 0

    @property
    def vend_bin(self) -> Path:
        """The vend console script of the checkout's .venv."""
        return self.repo / ".venv" / "bin" / "vend"

    def run_dir(self, name: str) -> Path:
        """Returns (creating it) the directory for one peer's config, pid and logs."""
        path = self.work_dir / "run" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def bench_bin(self, script: str) -> str:
        """Returns the path of a console script in the benchmark venv."""
        return str(self.bench_python.parent / script)


@dataclass
class Running:
    """A started peer.

    Attributes:
        port: the TCP port on 127.0.0.1 the load is sent to.
        servers: every process group the peer consists of (Apache and vend for the
            production path); CPU and memory are summed over all of them.
    """

    port: int
    servers: list[ServerProcess] = field(default_factory=list)


def launch(
    ctx: Context,
    name: str,
    argv: list[str],
    port: int,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    unix_socket: Path | None = None,
) -> ServerProcess:
    """Starts one server process group and waits until it listens.

    Args:
        ctx: paths, registry, core and control groups.
        name: the run directory's and control group's name.
        argv: the command.
        port: the TCP port it listens on (ignored with ``unix_socket``).
        env: its environment (default: the harness's).
        cwd: its working directory.
        unix_socket: wait for this Unix socket instead of the port.

    Returns:
        The started server, its process count settled.

    Raises:
        RuntimeError: it exited or did not listen in time (it is stopped then).
        OSError: the command could not be run.
    """
    server = start_server(
        name,
        argv,
        cpu=ctx.server_cpu,
        log_path=ctx.run_dir(name) / "out.log",
        registry=ctx.registry,
        env=env,
        cwd=cwd,
        cgroup=ctx.cgroups.create(name),
    )
    try:
        if unix_socket is not None:
            wait_for_unix_socket(unix_socket, server)
        else:
            wait_for_port(port, server)
    except BaseException:
        # The caller only learns of the server through the return value.
        stop_server(server, ctx.registry)
        raise
    wait_for_settled_group([server.pgid])
    return server


def start_nginx(
    ctx: Context, name: str, body: str, *, access_log: bool = False, open_files: int | None = None
) -> Running:
    """Starts nginx with a generated nginx.conf around a ``location /`` body.

    Args:
        ctx: paths, registry and cores.
        name: the peer's name (run directory).
        body: directives inside ``location / { }``.
        access_log: write the combined access log to ``<run dir>/access.log``.
        open_files: the worker's descriptor limit (``configs.nginx_conf``), or None.

    Returns:
        The running peer.
    """
    port = free_port()
    prefix = ctx.run_dir(name)
    (prefix / "tmp").mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    (prefix / "error.log").unlink(missing_ok=True)
    (prefix / "access.log").unlink(missing_ok=True)
    conf.write_text(
        configs.nginx_conf(
            prefix=prefix,
            port=port,
            body=body,
            is_root=ctx.is_root,
            connections=ctx.connections,
            access_log=prefix / "access.log" if access_log else None,
            open_files=open_files,
        )
    )
    argv = ["nginx", "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")]
    return Running(port, [launch(ctx, name, argv, port)])


def start_apache(
    ctx: Context,
    name: str,
    *,
    mpm: configs.ApacheMpm,
    body: str,
    modules: list[tuple[str, str]],
    port: int | None = None,
    tls: bool = False,
    vhost_tls: bool = False,
) -> ServerProcess:
    """Starts Apache with a generated httpd.conf (``configs.apache_conf``).

    Args:
        ctx: paths, registry and cores.
        name: the peer's name (server root under the run directory).
        mpm: "event" or "prefork".
        body: directives after the common part.
        modules: extra modules to load.
        port: the port to listen on (a free one when None).
        tls: serve HTTPS with the run's certificate.
        vhost_tls: load mod_ssl for a body whose virtual host sets TLS up itself.

    Returns:
        The started server.
    """
    port = port or free_port()
    root = ctx.run_dir(name)
    if ctx.is_root:
        # Children run as www-data and must be able to write the TLS session cache.
        os.chown(root, *www_data_ids())
    conf = root / "httpd.conf"
    (root / "error.log").unlink(missing_ok=True)
    conf.write_text(
        configs.apache_conf(
            server_root=root,
            port=port,
            mpm=mpm,
            modules=modules,
            body=body,
            is_root=ctx.is_root,
            connections=ctx.connections,
            tls=ctx.tls if tls else None,
            vhost_tls=vhost_tls,
        )
    )
    return launch(ctx, name, ["apache2", "-f", str(conf), "-DFOREGROUND"], port)


def www_data_ids() -> tuple[int, int]:
    """Returns: (uid, gid) of the account Debian's web servers run as."""
    entry = pwd.getpwnam(configs.RUN_USER)
    return entry.pw_uid, entry.pw_gid


def python_env(ctx: Context) -> dict[str, str]:
    """Returns: the environment of a Python peer (no VEND_*, BENCH_MOUNTS set)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("VEND_")}
    env["BENCH_MOUNTS"] = ":".join(str(mount) for mount in ctx.mounts)
    return env


def uvicorn_argv(ctx: Context, target: str, port: int) -> list[str]:
    """Returns: the uvicorn command line of a Starlette peer, as vend runs (uvloop, httptools)."""
    return [
        ctx.bench_bin("uvicorn"),
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def start_vend_process(
    ctx: Context, name: str, *, settings: dict[str, str] | None = None, unix_socket: bool = False
) -> tuple[int, ServerProcess, Path | None]:
    """Starts ``vend serve`` from the checkout's .venv over the three mounts.

    Args:
        ctx: paths, registry and cores.
        name: the run directory's name.
        settings: extra ``VEND_*`` environment variables.
        unix_socket: listen on ``<run dir>/sock/vend.sock`` (``socket_dir``) instead of TCP.

    Returns:
        (TCP port, the server, the socket path or None).

    Raises:
        RuntimeError: .venv/bin/vend is missing, or vend did not start.
    """
    if not ctx.vend_bin.is_file():
        raise RuntimeError(f"{ctx.vend_bin} is missing: install vend into the checkout's .venv")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("VEND_")}
    env["VEND_MOUNTS"] = json.dumps([str(mount) for mount in ctx.mounts])
    env.update(settings or {})
    argv = [str(ctx.vend_bin), "serve", "--port", str(port)]
    sock = None
    if unix_socket:
        sock = socket_dir(ctx, name) / "vend.sock"
        env["VEND_UNIX_SOCKET"] = str(sock)
    server = launch(ctx, name, argv, port, env=env, cwd=ctx.run_dir(name), unix_socket=sock)
    return port, server, sock


def socket_dir(ctx: Context, name: str) -> Path:
    """Makes a directory for vend's socket as apache/README.md sets it up: Apache's group,
    setgid (the socket file vend makes with mode 0660 gets that group), mode 2750.

    Args:
        ctx: paths.
        name: the run directory's name.

    Returns:
        The directory.
    """
    directory = ctx.run_dir(name) / "sock"
    directory.mkdir(exist_ok=True)
    if ctx.is_root:
        os.chown(directory, 0, grp.getgrnam(configs.RUN_USER).gr_gid)
    directory.chmod(0o2750)
    return directory
