"""``vend serve`` on a Unix-domain socket (the ``unix_socket`` setting), over real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import SAMPLE_MOUNTS_DIR
from tests.support import VEND, read_log_lines

START_BOUND_S = 15.0


class UnixVend:
    """One ``vend serve`` listening on a Unix socket, in its own process group.

    Args:
        sock: the socket path.
        log: file for its output.
        settings: other settings, as ``VEND_*`` environment variables.
    """

    def __init__(self, sock: Path, log: Path, settings: dict[str, Any]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VEND_")}
        env["VEND_UNIX_SOCKET"] = str(sock)
        for key, value in settings.items():
            env[f"VEND_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        self.sock, self.log = sock, log
        with open(log, "wb") as sink:
            self.proc = subprocess.Popen(
                [str(VEND), "serve"],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_listening(self) -> UnixVend:
        """Wait until the socket accepts a connection.

        Raises:
            RuntimeError: vend exited or did not listen within ``START_BOUND_S``.
        """
        deadline = time.monotonic() + START_BOUND_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vend exited {self.proc.returncode}: {self.output()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(self.sock))
                return self
            time.sleep(0.05)
        raise RuntimeError(f"vend did not listen on {self.sock}: {self.output()}")

    def output(self) -> str:
        """What vend printed so far."""
        return self.log.read_text(errors="replace")

    def client(self) -> httpx.Client:
        """An httpx client over the socket (the caller closes it)."""
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.sock)), base_url="http://vend", timeout=30
        )

    def stop(self) -> int | None:
        """SIGTERM the group (SIGKILL after 10 s). Returns: the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def unix_vend(tmp_path: Path) -> Iterator[Any]:
    """Start vends on Unix sockets under tmp_path; all are stopped at teardown."""
    started: list[UnixVend] = []

    def start(settings: dict[str, Any] | None = None, *, wait: bool = True) -> UnixVend:
        vend = UnixVend(
            tmp_path / "vend.sock", tmp_path / f"vend-{len(started)}.log", settings or {}
        )
        started.append(vend)
        return vend.wait_listening() if wait else vend

    yield start
    for vend in started:
        vend.stop()


def test_serves_on_the_socket_with_mode_0660(unix_vend: Any) -> None:
    """With unix_socket set, vend serves files byte-exact on that socket, made with mode 0660."""
    vend = unix_vend()
    assert stat.S_ISSOCK(vend.sock.lstat().st_mode)
    assert stat.S_IMODE(vend.sock.lstat().st_mode) == 0o660
    assert f"on unix:{vend.sock}" in vend.output()
    with vend.client() as client:
        response = client.get("/about.html")
    assert response.status_code == 200
    assert response.content == (SAMPLE_MOUNTS_DIR / "server1" / "about.html").read_bytes()


def test_forwarded_for_from_a_socket_peer_follows_unix_entry(
    unix_vend: Any, tmp_path: Path
) -> None:
    """A Unix-socket peer's X-Forwarded-For is believed by default ("unix"), not without it."""
    trusting_log, wary_log = tmp_path / "trusting.log", tmp_path / "wary.log"
    vend = unix_vend({"access_log": str(trusting_log)})
    with vend.client() as client:
        client.get("/about.html", headers={"X-Forwarded-For": "203.0.113.9"})
    assert read_log_lines(trusting_log, 1)[0].startswith("203.0.113.9 - - [")
    vend.stop()
    vend = unix_vend({"access_log": str(wary_log), "trusted_proxies": ["127.0.0.1", "::1"]})
    with vend.client() as client:
        client.get("/about.html", headers={"X-Forwarded-For": "203.0.113.9"})
    assert read_log_lines(wary_log, 1)[0].startswith("- - - [")


def test_a_stale_socket_file_is_replaced(unix_vend: Any, tmp_path: Path) -> None:
    """A socket file nobody listens on (a vend that was killed) is replaced at start."""
    with socket.socket(socket.AF_UNIX) as orphan:
        orphan.bind(str(tmp_path / "vend.sock"))  # bound, never listening: refuses connects
    vend = unix_vend()
    with vend.client() as client:
        assert client.get("/about.html").status_code == 200


def test_a_socket_in_use_or_a_plain_file_is_refused(unix_vend: Any, tmp_path: Path) -> None:
    """A second vend on a live socket, or a path that is not a socket, exits 3 untouched."""
    first = unix_vend()
    second = unix_vend(wait=False)
    assert second.proc.wait(START_BOUND_S) == 3
    assert "in use" in second.output()
    with first.client() as client:
        assert client.get("/about.html").status_code == 200
    first.stop()
    first.sock.unlink()
    first.sock.write_text("not a socket")
    third = unix_vend(wait=False)
    assert third.proc.wait(START_BOUND_S) == 3
    assert "not a socket" in third.output()
    assert first.sock.read_text() == "not a socket"


def test_several_workers_share_the_socket(unix_vend: Any) -> None:
    """With workers = 2, the workers serve on the one socket vend bound before forking."""
    vend = unix_vend({"workers": 2})
    with vend.client() as client:
        statuses = {client.get("/about.html").status_code for _ in range(20)}
    assert statuses == {200}
    assert stat.S_IMODE(vend.sock.lstat().st_mode) == 0o660
