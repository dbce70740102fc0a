"""vend as the tests run it behind Apache: ``vend serve`` subprocesses on loopback ports,
or on a Unix socket (vend's ``unix_socket`` setting).

Each process runs in its own process group, so ``Vend.stop`` can end it and anything it
forked, and fixtures call it in ``finally`` even when a test fails.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import ADDRESS_IN_USE, PortTaken, free_port, listens_on, on_free_ports

from .httpd import stop_process_group

PROBE_USER_AGENT = "vend-apache-tests-probe"
"""The User-Agent of the tests' own readiness probes, to tell them from Apache's checks."""


class VendError(RuntimeError):
    """``vend serve`` exited or did not answer its health endpoint in time."""


def vend_command() -> list[str]:
    """Return the command that runs vend's CLI from the environment running the tests."""
    script = Path(sys.executable).with_name("vend")
    if script.exists():
        return [str(script)]
    found = shutil.which("vend")
    if found:
        return [found]
    return [sys.executable, "-c", "from app.cli import main; main()"]


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix-domain stream socket (what ``curl --unix-socket`` does).

    Args:
        path: the socket file.
        timeout_s: connect and read timeout, in seconds.
    """

    def __init__(self, path: Path, *, timeout_s: float = 2.0) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self.socket_path = path

    def connect(self) -> None:
        """Connect to the socket file instead of a TCP address."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def get_status(
    port: int, path: str, *, timeout_s: float = 2.0, unix_socket: Path | None = None
) -> int:
    """Return the status of ``GET path`` on ``127.0.0.1:port`` (plain HTTP/1.1).

    Args:
        port: the TCP port.
        path: the request-target.
        timeout_s: connect and read timeout, in seconds.
        unix_socket: ask over this Unix socket instead of the port.

    Raises:
        OSError: the connection failed.
        http.client.HTTPException: the answer was not HTTP.
    """
    conn = (
        UnixHTTPConnection(unix_socket, timeout_s=timeout_s)
        if unix_socket is not None
        else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    )
    try:
        conn.request("GET", path, headers={"User-Agent": PROBE_USER_AGENT})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@dataclass
class Vend:
    """One ``vend serve`` process.

    Attributes:
        port: its loopback TCP port (unused when it listens on ``unix_socket``).
        process: the process (leader of its own process group).
        access_log: the file its access log goes to.
        output: the file that holds its stdout and stderr.
        unix_socket: the Unix socket it listens on instead, or None.
    """

    port: int
    process: subprocess.Popen[bytes]
    access_log: Path
    output: Path
    unix_socket: Path | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        """vend's URL as the vhosts' ``VEND_BACKEND`` Defines want it:
        ``http://127.0.0.1:PORT``, or ``unix:PATH|http://localhost``."""
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}|http://localhost"
        return f"http://127.0.0.1:{self.port}"

    def access_lines(self) -> list[str]:
        """Return the access log's lines so far."""
        if not self.access_log.exists():
            return []
        return self.access_log.read_text(errors="replace").splitlines()

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the vend process itself (not its group)."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)

    def stop(self, *, timeout_s: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout_s`` seconds; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        stop_process_group(self.process, timeout_s=timeout_s)


def start_vend(
    workdir: Path,
    *,
    mounts: Sequence[Path],
    port: int | None = None,
    trusted_proxies: Sequence[str] | None = None,
    drain_s: float | None = None,
    unix_socket: Path | None = None,
    wait_healthy: bool = True,
    timeout_s: float = 20.0,
) -> Vend:
    """Start ``vend serve`` on a loopback port and wait until its health endpoint answers.

    A port picked here was free a moment ago: when another process binds it first, vend
    exits saying the address is in use and is started again on another free port
    (``PORT_ATTEMPTS`` in all). The caller must call ``Vend.stop`` (fixtures do it in
    ``finally``).

    Args:
        workdir: an existing directory for its access log and output.
        mounts: the mount directories, first has priority.
        port: the TCP port; a free one when None.
        trusted_proxies: vend's ``trusted_proxies`` setting; vend's default when None.
        drain_s: vend's ``timeouts.drain_s`` (keep serving after SIGTERM, health 503,
            ``Connection: close``); vend's default when None.
        unix_socket: listen on this Unix socket (vend's ``unix_socket``) instead of a port.
        wait_healthy: wait for 200 from ``/.well-known/vend/health``; when False, any
            HTTP answer will do (a vend whose mounts are all missing answers 503).
        timeout_s: seconds to wait for that answer (each attempt).

    Returns:
        The running vend.

    Raises:
        VendError: vend exited or did not answer in time; the message has its output.
    """

    def start() -> Vend:
        return _start_vend_once(
            workdir,
            mounts=mounts,
            port=port or free_port(),
            trusted_proxies=trusted_proxies,
            drain_s=drain_s,
            unix_socket=unix_socket,
            wait_healthy=wait_healthy,
            timeout_s=timeout_s,
        )

    return start() if port is not None else on_free_ports(start)


class _PortTaken(VendError, PortTaken):
    """vend exited because another process had bound its port first."""


def _start_vend_once(
    workdir: Path,
    *,
    mounts: Sequence[Path],
    port: int,
    trusted_proxies: Sequence[str] | None,
    drain_s: float | None,
    unix_socket: Path | None,
    wait_healthy: bool,
    timeout_s: float,
) -> Vend:
    """``start_vend`` on ``port``, once.

    Raises:
        _PortTaken: vend exited saying the address is in use.
        VendError: as ``start_vend``.
    """
    # A vend restarted on the same port gets files of its own.
    run = f"vend-{port}-{time.monotonic_ns()}"
    access_log = workdir / f"{run}-access.log"
    output = workdir / f"{run}.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEND_")}
    env["VEND_MOUNTS"] = json.dumps([str(m) for m in mounts])
    env["VEND_ACCESS_LOG"] = str(access_log)
    if trusted_proxies is not None:
        env["VEND_TRUSTED_PROXIES"] = json.dumps(list(trusted_proxies))
    if drain_s is not None:
        env["VEND_TIMEOUTS__DRAIN_S"] = str(drain_s)
    if unix_socket is not None:
        env["VEND_UNIX_SOCKET"] = str(unix_socket)
    command = [*vend_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(output, "ab") as sink:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    vend = Vend(
        port=port, process=process, access_log=access_log, output=output, unix_socket=unix_socket
    )
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if process.poll() is not None:
                text = output.read_text()
                if unix_socket is None and ADDRESS_IN_USE in text.lower():
                    raise _PortTaken(f"port {port} was taken before vend bound it:\n{text}")
                raise VendError(f"vend exited with {process.returncode}:\n{text}")
            # Asked only once the port is vend's own, never whoever else took it.
            if unix_socket is not None or listens_on(process.pid, port):
                try:
                    status = get_status(port, "/.well-known/vend/health", unix_socket=unix_socket)
                    if status == 200 or not wait_healthy:
                        return vend
                except (OSError, http.client.HTTPException):
                    pass
            if time.monotonic() > deadline:
                raise VendError(f"vend did not answer within {timeout_s} s:\n{output.read_text()}")
            time.sleep(0.05)
    except BaseException:
        vend.stop()
        raise


def stop_abruptly(vend: Vend) -> None:
    """SIGKILL vend's process group at once (a crash) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(vend.process.pid, signal.SIGKILL)
    vend.process.wait(timeout=10)
    vend.stop()
