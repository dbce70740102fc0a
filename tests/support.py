"""Test support: a real ``vend serve`` subprocess on a loopback port, and raw HTTP.

``VendProcess`` starts vend exactly as an operator does (the ``vend`` console script of
the virtual environment running the tests), on a free port of 127.0.0.1, and always
stops its whole process group. ``raw_request`` sends bytes exactly as given on a TCP
socket, because ordinary clients tidy ``..``, ``#`` and spaces away before sending.
``parse_responses`` splits pipelined responses, as written, by their Content-Length.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
HOSTILE_PATHS = REPO / "tests" / "hostile-paths.tsv"
"""The project's hostile-path corpus: one attack a row (raw_path, class, source, expected)."""
VEND = Path(sys.executable).parent / "vend"


def read_hostile_paths() -> list[dict[str, str]]:
    """Read the hostile-path corpus.

    Returns:
        One dict a row, keyed by the header (``raw_path``, ``class``, ``source``,
        ``expected``); ``raw_path`` exactly as it is to be sent.

    Raises:
        OSError: the corpus file is missing (a missing corpus must fail, never pass).
    """
    with open(HOSTILE_PATHS, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.05) -> T:
    """Poll ``predicate()`` until it returns something true, and return that.

    Args:
        predicate: what to poll.
        timeout_s: how long to poll at most, in seconds.
        what: what is waited for, named in the failure.
        poll_s: pause between polls, in seconds.

    Returns:
        The first true value ``predicate()`` returned.

    Raises:
        AssertionError: nothing true within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(poll_s)
    return value


def read_log_lines(log: Path, count: int, bound_s: float = 5.0) -> list[str]:
    """A log file's lines once ``count`` are there (vend writes its access log in batches).

    Args:
        log: the log file.
        count: how many lines to wait for.
        bound_s: how long to wait at most, in seconds.

    Returns:
        The lines then, or the lines there are after ``bound_s`` (the caller asserts).
    """
    deadline = time.monotonic() + bound_s
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` (an IPv4 address) that was free a moment ago.

    Another process may bind it before the caller's server does: a server started on it
    must be checked to hold it (``listens_on``) and started again on another port when
    it reports the address in use (``PORT_ATTEMPTS``, ``ADDRESS_IN_USE``).
    """
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


PORT_ATTEMPTS = 5
"""How many ports a server started on a ``free_port`` is tried on before giving up."""
ADDRESS_IN_USE = "address already in use"
"""What vend (``cannot listen on ...: address already in use``) and Apache (``(98)Address
already in use``) print, in lower case, when another process took the port first."""


class PortTaken(Exception):
    """A server exited because another process had bound its port first."""


def on_free_ports(start: Callable[[], T], cleanup: Callable[[], None] | None = None) -> T:
    """Call ``start`` (which picks free ports itself) until it does not raise ``PortTaken``.

    Args:
        start: starts a server on newly picked ports and returns it; raises ``PortTaken``
            when another process bound one of them first.
        cleanup: called before each further attempt (files the failed one left).

    Returns:
        What ``start`` returned.

    Raises:
        PortTaken: on each of ``PORT_ATTEMPTS`` attempts; anything else ``start`` raises.
    """
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return start()
        except PortTaken:
            if attempt == PORT_ATTEMPTS:
                raise
            if cleanup is not None:
                cleanup()
    raise AssertionError("unreachable: the last attempt returns or raises")


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP ``port`` of any local address (proc(5), /proc/net/tcp)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            next(handle, None)
            for line in handle:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants (proc(5), /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo and len(found) < 1000:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                todo.extend(int(p) for p in (task / "children").read_text().split())
    return found


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` or one of its descendants holds a socket listening on TCP
    ``port`` (so that a client connecting there reaches it, not whoever took the port).

    Args:
        pid: the server's process id.
        port: the TCP port.

    Returns:
        True once such a socket is open in one of those processes; False before, or when
        the port is another process's.
    """
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for member in _family(pid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{member}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{member}/fd/{fd}") in wanted:
                        return True
    return False


class VendProcess:
    """``vend serve`` in its own process group on a free loopback port.

    Args:
        mounts: mount paths or tables, as in the settings' ``mounts``.
        settings: other settings, written to a TOML-free environment (``VEND_*``).
        args: extra command-line arguments.
        command: the command to run instead of ``vend serve`` (the fallback test runs
            plain uvicorn); ``{port}`` is replaced.
    """

    def __init__(
        self,
        mounts: Sequence[Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        *,
        args: Sequence[str] = (),
        command: Sequence[str] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("VEND_")}
        if mounts is not None:
            env["VEND_MOUNTS"] = json.dumps([str(m) if isinstance(m, Path) else m for m in mounts])
        for key, value in (settings or {}).items():
            env[f"VEND_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        env.update(extra_env or {})
        self.env = env
        if command is None:
            command = [str(VEND), "serve", "--port", "{port}", *args]
        self._template = list(command)
        self.proc: subprocess.Popen[bytes] | None = None
        self.output_path: Path | None = None

    @property
    def url(self) -> str:
        """Base URL, without trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def command(self) -> list[str]:
        """The command run, with ``{port}`` replaced by the current port."""
        return [part.replace("{port}", str(self.port)) for part in self._template]

    def start(self, output: Path, timeout_s: float = 15.0) -> VendProcess:
        """Start the server and wait until it listens on its port and answers there.

        The port was free when picked; if another process binds it first, the server
        exits saying the address is in use and is started again on another free port
        (``PORT_ATTEMPTS`` in all; ``port`` and ``url`` follow).

        Args:
            output: file receiving the server's stdout and stderr (each attempt
                starts it anew).
            timeout_s: how long to wait for it to answer, in seconds (each attempt).

        Raises:
            RuntimeError: the server exited or did not answer in time (its output is
                included).
        """
        self.output_path = output
        for attempt in range(1, PORT_ATTEMPTS + 1):
            with open(output, "wb") as sink:
                self.proc = subprocess.Popen(
                    self.command,
                    env=self.env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    if ADDRESS_IN_USE in self.output().lower() and attempt < PORT_ATTEMPTS:
                        break
                    raise RuntimeError(f"vend exited with {self.proc.returncode}:\n{self.output()}")
                if listens_on(self.proc.pid, self.port):
                    try:
                        with socket.create_connection(("127.0.0.1", self.port), timeout=5):
                            return self
                    except OSError:
                        pass
                time.sleep(0.05)
            else:
                self.stop()
                raise RuntimeError(f"vend did not answer within {timeout_s} s:\n{self.output()}")
            self.port = free_port()
        raise AssertionError("unreachable: the last attempt returns or raises")

    def output(self) -> str:
        """What the server printed so far."""
        return self.output_path.read_text(errors="replace") if self.output_path else ""

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout_s`` seconds.

        Returns:
            The exit status, or None if it was never started.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client for this server (the caller closes it)."""
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


def rss_bytes(pid: int, *, if_gone: int | None = None) -> int:
    """Resident set size of a process, in bytes (VmRSS in /proc/PID/status).

    Args:
        pid: the process.
        if_gone: what to return when the process is gone or has no VmRSS (a zombie);
            None: raise.

    Raises:
        RuntimeError: the process is gone and ``if_gone`` is None.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    if if_gone is None:
        raise RuntimeError(f"process {pid} has no VmRSS")
    return if_gone


def open_fds(pid: int) -> int:
    """How many descriptors a process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class RawResponse:
    """A response read off a socket: status, lower-case headers, body as received."""

    status: int
    headers: dict[str, str]
    body: bytes


def raw_request(port: int, request: bytes, timeout_s: float = 10.0) -> RawResponse:
    """Send raw request bytes to 127.0.0.1:port and read the response until close.

    Args:
        port: the server's port.
        request: the whole request, CRLFs included; it should ask for ``Connection: close``.
        timeout_s: overall bound, in seconds.

    Returns:
        The parsed status line and headers and the raw body (no chunked decoding).

    Raises:
        TimeoutError: the server did not close the connection in time.
    """
    deadline = time.monotonic() + timeout_s
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("server did not close the connection") from None
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith(b"HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return RawResponse(status, headers, body)


def get_raw(port: int, target: bytes, method: bytes = b"GET", extra: bytes = b"") -> RawResponse:
    """``raw_request`` for one request line with Host and ``Connection: close``."""
    return raw_request(
        port,
        method
        + b" "
        + target
        + b" HTTP/1.1\r\nHost: legacy.example.org\r\n"
        + extra
        + b"Connection: close\r\n\r\n",
    )


@dataclass
class Response:
    """One response parsed off the bytes written."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The first value of a field, or None."""
        return next((v for n, v in self.headers if n == name), None)


def parse_responses(data: bytes, methods: list[str]) -> list[Response]:
    """Split written bytes into responses (one per method given, at most).

    Args:
        data: everything the server wrote.
        methods: the request methods, in order (a HEAD answer has no body).

    Returns:
        The complete responses found; trailing bytes that make no whole response are
        an error.
    """
    out: list[Response] = []
    rest = bytes(data)
    for method in methods:
        if not rest:
            break
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"incomplete head: {head[:200]!r}"
        lines = head.split(b"\r\n")
        version, status, reason = lines[0].split(b" ", 2)
        assert version == b"HTTP/1.1"
        headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
        response = Response(int(status), reason, headers, b"")  # type: ignore[arg-type]
        length = int(response.header(b"content-length") or 0)
        if method == "HEAD" or response.status == 304:
            length = 0
        assert len(rest) >= length, "incomplete body"
        response.body, rest = rest[:length], rest[length:]
        out.append(response)
    assert not rest, f"bytes after the last response: {rest[:200]!r}"
    return out
