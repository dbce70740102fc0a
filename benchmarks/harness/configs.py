"""Generated configuration files for nginx and Apache peers.

Nothing under /etc/nginx or /etc/apache2 is read or changed: each Apache is started with
``apache2 -f <generated file>``, which loads exactly the modules listed by its own
``LoadModule`` lines from Debian's module directory, and nginx with ``nginx -p <dir> -c
<generated file>``. Only /etc/mime.types (and nginx's mime.types) are read, for
Content-Type. Access logs are off in every peer so that no peer pays for logging that
another skips (vend runs with its defaults, which log nothing), except the "-log" peers,
which write them to a file, and the production path, whose shipped vhost logs (so the
TLS reference logs too). The production path's Apache loads ``apache/vend.conf`` itself,
only its ``Define`` lines edited (``render_shipped_vhost``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

APACHE_MODULE_DIR: Final = Path("/usr/lib/apache2/modules")
NGINX_MIME_TYPES: Final = Path("/etc/nginx/mime.types")
# Apache event threads beyond one per client connection: a proxied TLS response holds its
# thread while it waits for vend and while it writes, and an event process with no idle
# thread closes keep-alive connections (wrk counts read errors; seen with 64 spare).
EVENT_SPARE_THREADS: Final = 256
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


def nginx_conf(
    *,
    prefix: Path,
    port: int,
    body: str,
    is_root: bool,
    connections: int,
    access_log: Path | None = None,
    open_files: int | None = None,
) -> str:
    """Returns an nginx.conf for one worker on 127.0.0.1:port.

    Args:
        prefix: the nginx prefix directory (pid file, temp paths).
        port: TCP port on 127.0.0.1.
        body: the directives inside ``location / { }``.
        is_root: whether the harness runs as root (then workers run as ``RUN_USER``).
        connections: concurrent client connections the loads open.
        access_log: write nginx's combined access log to this file (unbuffered, a write
            per request, as vend's is a line per request), or no log.
        open_files: the worker's limit of open descriptors (``worker_rlimit_nofile``),
            for an ``open_file_cache`` that holds a descriptor per entry; None keeps the
            inherited limit.

    Returns:
        The configuration text.
    """
    log = f"access_log {access_log} combined;" if access_log else "access_log off;"
    user = f"user {RUN_USER};\n" if is_root else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    rlimit = f"worker_rlimit_nofile {open_files};\n" if open_files else ""
    return f"""{user}{rlimit}worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {max(1024, connections * 2)}; }}
http {{
    include {NGINX_MIME_TYPES};
    default_type application/octet-stream;
    {log}
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


def nginx_open_file_cache(*, max_entries: int, inactive_s: int, valid_s: int) -> str:
    """Returns the directives of nginx's metadata cache: open descriptors, sizes, times and
    lookup errors (a name not found) of recently used files.

    Args:
        max_entries: most entries held (least recently used evicted first).
        inactive_s: seconds an entry unused is kept.
        valid_s: seconds before an entry is checked against the file system again (as
            vend's ``cache.ttl_s``).

    Returns:
        nginx directives, for a ``location`` body.
    """
    return (
        f"            open_file_cache max={max_entries} inactive={inactive_s}s;\n"
        f"            open_file_cache_valid {valid_s}s;\n"
        "            open_file_cache_min_uses 1;\n"
        "            open_file_cache_errors on;"
    )


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
    vhost_tls: bool = False,
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
        vhost_tls: load mod_ssl and its session cache for a ``body`` whose virtual host
            sets up TLS itself (the shipped vhost).

    Returns:
        The configuration text.
    """
    base = [
        ("mpm_event_module" if mpm == "event" else "mpm_prefork_module", f"mod_mpm_{mpm}.so"),
        ("authz_core_module", "mod_authz_core.so"),
        ("mime_module", "mod_mime.so"),
    ]
    if tls is not None or vhost_tls:
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
    if tls is not None or vhost_tls:
        tls_block = f"SSLSessionCache shmcb:{server_root}/ssl_scache(512000)\n"
    if tls is not None:
        tls_block += f"""SSLEngine on
SSLCertificateFile {tls.cert_path}
SSLCertificateKeyFile {tls.key_path}
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


def apache_static(root: Path, *, access_log: Path | None = None) -> str:
    """Returns the body serving one directory as static files.

    Args:
        root: the directory.
        access_log: write Apache's combined access log there (as the shipped vhost does
            for the production path it is compared with), or no log.

    Returns:
        Apache directives.
    """
    log = ""
    if access_log is not None:
        log = (
            'LogFormat "%h %l %u %t \\"%r\\" %>s %O \\"%{Referer}i\\" \\"%{User-Agent}i\\"" '
            f"combined\nCustomLog {access_log} combined\n"
        )
    return f"""{log}DocumentRoot {root}
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


SHIPPED_VHOST: Final = Path(__file__).resolve().parents[2] / "apache" / "vend.conf"
_DEFINE_LINE: Final = re.compile(r"^Define[ \t]+(\w+)[ \t]+(.*)$", re.MULTILINE)
# What the shipped vhost needs, plus what Debian enables on every site of a stock host
# and that touches each request (mod_deflate with its stock AddOutputFilterByType below).
SHIPPED_VHOST_MODULES: Final = [
    (f"{name}_module", f"mod_{name}.so")
    for name in (
        "authz_host",
        "alias",
        "env",
        "headers",
        "filter",
        "deflate",
        "rewrite",
        "proxy",
        "proxy_http",
        "http2",
    )
]
# As Debian's mods-available/deflate.conf; the shipped vhost keeps it off vend's bodies.
DEBIAN_DEFLATE: Final = """AddOutputFilterByType DEFLATE text/html text/plain text/xml text/css
AddOutputFilterByType DEFLATE text/javascript application/javascript application/json
LogFormat "%h %l %u %t \\"%r\\" %>s %O \\"%{Referer}i\\" \\"%{User-Agent}i\\"" combined"""


def render_shipped_vhost(defines: dict[str, str], *, vhost: Path = SHIPPED_VHOST) -> str:
    """Returns the shipped vhost with the values of some ``Define`` lines replaced.

    Nothing else of the file is changed: what the production-path peer measures is what
    ships (apache/README.md tells operators to edit only these lines).

    Args:
        defines: ``Define`` name -> new value (written as is).
        vhost: the shipped file.

    Returns:
        The edited text.

    Raises:
        KeyError: a name has no ``Define`` line in the file, or more than one.
    """
    text = vhost.read_text()
    found = [match.group(1) for match in _DEFINE_LINE.finditer(text)]
    for name in defines:
        if found.count(name) != 1:
            raise KeyError(f"{name}: {found.count(name)} Define lines in {vhost}")

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"Define {name} {defines[name]}" if name in defines else match.group(0)

    return _DEFINE_LINE.sub(replace, text)


def shipped_vhost_defines(
    *, https_port: int, http_port: int, tls: TlsFiles, backend: str, log_dir: Path, acme: Path
) -> dict[str, str]:
    """Returns the benchmark's values for the shipped vhost's ``Define`` lines.

    Args:
        https_port: the TLS port on 127.0.0.1 the load goes to.
        http_port: the port-80 vhost's port (redirects only; not loaded).
        tls: the throw-away certificate and key.
        backend: vend's URL, e.g. ``unix:/path/vend.sock|http://localhost``.
        log_dir: where Apache's vend-access.log and vend-error.log go.
        acme: an (empty) ACME webroot.

    Returns:
        Define name -> value.
    """
    return {
        "VEND_SERVER_NAME": "localhost",
        "VEND_SERVER_ALIAS": "127.0.0.1",
        "VEND_HTTP_PORT": str(http_port),
        "VEND_HTTPS_PORT": str(https_port),
        "VEND_CERT_FILE": str(tls.cert_path),
        "VEND_KEY_FILE": str(tls.key_path),
        "VEND_ACME_WEBROOT": str(acme),
        "VEND_BACKEND": backend,
        "VEND_LOG_DIR": str(log_dir),
    }


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
