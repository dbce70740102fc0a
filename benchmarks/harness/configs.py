"""Generated configuration files for nginx and Apache peers.

Nothing under /etc/nginx or /etc/apache2 is read or changed: each Apache is started with
``apache2 -f <generated file>``, which loads exactly the modules listed by its own
``LoadModule`` lines from Debian's module directory, and nginx with ``nginx -p <dir> -c
<generated file>``. Only /etc/mime.types (and nginx's mime.types) are read, for
Content-Type. Access logs are off in every peer so that no peer pays for logging that
another skips (vend runs with its defaults; see benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

APACHE_MODULE_DIR: Final = Path("/usr/lib/apache2/modules")
NGINX_MIME_TYPES: Final = Path("/etc/nginx/mime.types")
# Apache event threads beyond one per client connection.
EVENT_SPARE_THREADS: Final = 64
# The unprivileged account Debian's web servers run as; the harness runs as root.
RUN_USER: Final = "www-data"

ApacheMpm = Literal["event", "prefork"]


@dataclass(frozen=True)
class TlsFiles:
    """Certificate and key for a TLS listener.

    Attributes:
        cert_path: PEM certificate chain (leaf first).
        key_path: PEM private key.
    """

    cert_path: Path
    key_path: Path


def nginx_conf(*, prefix: Path, port: int, body: str, is_root: bool, connections: int) -> str:
    """Returns an nginx.conf for one worker on 127.0.0.1:port.

    Args:
        prefix: the nginx prefix directory (pid file, temp paths).
        port: TCP port on 127.0.0.1.
        body: the directives inside ``location / { }``.
        is_root: whether the harness runs as root (then workers run as ``RUN_USER``).
        connections: concurrent client connections the loads open.

    Returns:
        The configuration text.
    """
    user = f"user {RUN_USER};\n" if is_root else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {max(1024, connections * 2)}; }}
http {{
    include {NGINX_MIME_TYPES};
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65s;
    keepalive_requests 100000000;
{temp}
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        location / {{
{body}
        }}
    }}
}}
"""


def nginx_one_root(root: Path) -> str:
    """Returns the location body serving one directory.

    Args:
        root: the directory.

    Returns:
        nginx directives.
    """
    return f"            root {root};"


def nginx_try_files(mounts: list[Path]) -> str:
    """Returns the location body looking a path up in each mount in order.

    ``try_files`` checks each candidate with a stat and serves the first that exists,
    the same federation vend does.

    Args:
        mounts: directories in search order; they must share a parent directory.

    Returns:
        nginx directives.

    Raises:
        ValueError: if the mounts do not share one parent.
    """
    parents = {mount.parent for mount in mounts}
    if len(parents) != 1:
        raise ValueError("try_files mounts must share one parent directory")
    candidates = " ".join(f"/{mount.name}$uri" for mount in mounts)
    return f"            root {parents.pop()};\n            try_files {candidates} =404;"


def _load(module: str, filename: str) -> str:
    return f"LoadModule {module} {APACHE_MODULE_DIR / filename}"


def apache_conf(
    *,
    server_root: Path,
    port: int,
    mpm: ApacheMpm,
    modules: list[tuple[str, str]],
    body: str,
    is_root: bool,
    connections: int,
    tls: TlsFiles | None = None,
) -> str:
    """Returns a complete httpd.conf for one Apache on 127.0.0.1:port.

    Args:
        server_root: ServerRoot; holds the pid file, logs and runtime files.
        port: TCP port on 127.0.0.1.
        mpm: "event" (one process, a thread per connection and some spare) or "prefork"
            (one process per connection, as mod_php requires).
        modules: extra (module identifier, file name) pairs to load, e.g.
            ("rewrite_module", "mod_rewrite.so").
        body: directives appended after the common part (DocumentRoot, handlers, rules).
        is_root: whether the harness runs as root (then children run as ``RUN_USER``).
        connections: concurrent client connections the loads open; the MPM is sized so
            that all of them are served at once.
        tls: certificate and key to serve HTTPS; mod_ssl is loaded when given.

    Returns:
        The configuration text.
    """
    base = [
        ("mpm_event_module" if mpm == "event" else "mpm_prefork_module", f"mod_mpm_{mpm}.so"),
        ("authz_core_module", "mod_authz_core.so"),
        ("mime_module", "mod_mime.so"),
    ]
    if tls is not None:
        base += [("socache_shmcb_module", "mod_socache_shmcb.so"), ("ssl_module", "mod_ssl.so")]
    loads = "\n".join(_load(module, filename) for module, filename in base + modules)
    user = f"User {RUN_USER}\nGroup {RUN_USER}\n" if is_root else ""
    if mpm == "event":
        # One process with a thread for every connection plus headroom: with several
        # processes the connections spread unevenly, and an event process whose threads
        # are all busy closes its keep-alive connections (wrk counts read errors). A TLS
        # write keeps its thread busy, hence the headroom.
        threads = connections + EVENT_SPARE_THREADS
        mpm_block = f"""StartServers 1
ServerLimit 1
ThreadsPerChild {threads}
ThreadLimit {threads}
MaxRequestWorkers {threads}
MinSpareThreads 1
MaxSpareThreads {threads}
MaxConnectionsPerChild 0"""
    else:
        # Prefork holds one process per keep-alive connection: start them all up front so
        # no process is forked during a measurement.
        mpm_block = f"""StartServers {connections}
ServerLimit {connections}
MaxRequestWorkers {connections}
MinSpareServers 1
MaxSpareServers {connections}
MaxConnectionsPerChild 0"""
    tls_block = ""
    if tls is not None:
        tls_block = f"""SSLEngine on
SSLCertificateFile {tls.cert_path}
SSLCertificateKeyFile {tls.key_path}
SSLSessionCache shmcb:{server_root}/ssl_scache(512000)
"""
    return f"""ServerRoot {server_root}
{loads}
{user}ServerName localhost
Listen 127.0.0.1:{port}
PidFile {server_root}/httpd.pid
DefaultRuntimeDir {server_root}
Mutex file:{server_root} default
ErrorLog {server_root}/error.log
LogLevel warn
TypesConfig /etc/mime.types
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 65
EnableSendfile On
EnableMMAP On
{mpm_block}
<Directory />
    Options None
    AllowOverride None
    Require all denied
</Directory>
{tls_block}{body}
"""


def apache_static(root: Path) -> str:
    """Returns the body serving one directory as static files.

    Args:
        root: the directory.

    Returns:
        Apache directives.
    """
    return f"""DocumentRoot {root}
<Directory {root}>
    Require all granted
</Directory>"""


def apache_mod_php(script: Path, mounts: list[Path]) -> str:
    """Returns the body routing every request to the legacy PHP script.

    Args:
        script: absolute path of benchmarks/peers/legacy.php.
        mounts: directories the script searches, in order (colon-joined into LEGACY_MOUNTS).

    Returns:
        Apache directives.
    """
    grants = "\n".join(
        f"<Directory {directory}>\n    Require all granted\n</Directory>"
        for directory in [script.parent, *mounts]
    )
    return f"""DocumentRoot {script.parent}
{grants}
SetEnv LEGACY_MOUNTS "{":".join(str(mount) for mount in mounts)}"
RewriteEngine On
RewriteRule "^/?(.*)$" "/{script.name}" [L]
<Files "{script.name}">
    SetHandler application/x-httpd-php
</Files>"""


def apache_reverse_proxy(backend_port: int) -> str:
    """Returns the body proxying every path to a backend on 127.0.0.1, as production does.

    The RewriteRule, ProxyIOBufferSize and the pooled connections' ttl (4 s, below vend's
    5 s keep-alive timeout) are the production ones (apache/vend.conf). The ``<Proxy>`` section with ``ProxySet``
    defines a worker for the backend URL, so the rule's requests reuse pooled keep-alive
    connections instead of mod_proxy's default worker, which opens one per request.

    Args:
        backend_port: TCP port of the backend (vend) on 127.0.0.1.

    Returns:
        Apache directives.
    """
    backend = f"http://127.0.0.1:{backend_port}"
    return f"""ProxyIOBufferSize 131072
RewriteEngine On
RewriteRule "^/?(.*)$" "{backend}/$1" [P]
<Proxy "{backend}/">
    ProxySet keepalive=On ttl=4
    Require all granted
</Proxy>"""


def php_modules() -> list[tuple[str, str]]:
    """Returns the modules the mod_php peer loads, finding Debian's libphp build.

    Returns:
        (module identifier, file name) pairs.

    Raises:
        FileNotFoundError: if no libphp*.so is installed (libapache2-mod-php missing).
    """
    builds = sorted(APACHE_MODULE_DIR.glob("libphp*.so"))
    if not builds:
        raise FileNotFoundError(f"no libphp*.so in {APACHE_MODULE_DIR}")
    return [
        ("php_module", builds[-1].name),
        ("rewrite_module", "mod_rewrite.so"),
        ("env_module", "mod_env.so"),
    ]


PROXY_MODULES: Final = [
    ("rewrite_module", "mod_rewrite.so"),
    ("proxy_module", "mod_proxy.so"),
    ("proxy_http_module", "mod_proxy_http.so"),
]
