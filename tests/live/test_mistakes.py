"""Operator mistakes through the real ``vend`` command: one ``vend:`` line, the README's exit
status, no traceback; the same mistakes at a SIGHUP reload keep the running settings."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.settings import SAMPLE_MOUNTS_DIR
from tests.support import VEND, VendProcess, wait_until

pytestmark = pytest.mark.live

SETTINGS_INVALID = 2
START_FAILED = 3


@dataclass
class Mistake:
    """One operator mistake: what ``vend serve`` is given, the line and status expected.

    ``{tmp}`` in any string is the test's own temporary directory; ``{shared}`` a
    directory everyone may read and only root may write; ``{port}`` a port the test
    holds bound on 127.0.0.1; ``{sock}`` a Unix socket the test listens on. ``as_nobody``:
    vend runs as the user nobody.
    """

    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    line: str = ""
    status: int = SETTINGS_INVALID
    as_nobody: bool = False


MISTAKES = {
    "access-log-in-a-missing-directory": Mistake(
        env={"VEND_ACCESS_LOG": "{tmp}/nodir/access.log"},
        line="invalid setting access_log {tmp}/nodir/access.log:"
        " directory {tmp}/nodir does not exist",
    ),
    "access-log-in-a-missing-directory-with-workers": Mistake(
        env={"VEND_ACCESS_LOG": "{tmp}/nodir/access.log"},
        args=["--workers", "2"],
        line="invalid setting access_log {tmp}/nodir/access.log:"
        " directory {tmp}/nodir does not exist",
    ),
    "access-log-is-a-directory": Mistake(
        env={"VEND_ACCESS_LOG": "{tmp}/adir"},
        line="invalid setting access_log {tmp}/adir: a directory, not a regular file",
    ),
    "redirect-map-missing": Mistake(
        env={"VEND_REDIRECT_MAP": "{tmp}/none.txt"},
        line="invalid setting redirect_map {tmp}/none.txt: no such file",
    ),
    "redirect-map-is-a-directory": Mistake(
        env={"VEND_REDIRECT_MAP": "{tmp}/adir"},
        line="invalid setting redirect_map {tmp}/adir: a directory, not a regular file",
    ),
    "unix-socket-in-a-missing-directory": Mistake(
        env={"VEND_UNIX_SOCKET": "{tmp}/nodir/vend.sock"},
        line="invalid setting unix_socket {tmp}/nodir/vend.sock:"
        " directory {tmp}/nodir does not exist",
    ),
    "unix-socket-is-a-regular-file": Mistake(
        env={"VEND_UNIX_SOCKET": "{tmp}/afile"},
        line="cannot listen on unix:{tmp}/afile: {tmp}/afile exists and is not a socket",
        status=START_FAILED,
    ),
    "config-file-missing": Mistake(
        args=["--config", "{tmp}/none.toml"],
        line="config file {tmp}/none.toml: No such file or directory",
    ),
    "config-file-is-a-directory": Mistake(
        args=["--config", "{tmp}/adir"],
        line="config file {tmp}/adir: Is a directory",
    ),
    "mounts-a-bare-path": Mistake(
        env={"VEND_MOUNTS": "/srv/content"},
        line="""invalid VEND_MOUNTS: it must be a JSON list, e.g. VEND_MOUNTS='["/srv/content"]'""",
    ),
    "trusted-proxies-a-bare-address": Mistake(
        env={"VEND_TRUSTED_PROXIES": "127.0.0.1"},
        line="invalid VEND_TRUSTED_PROXIES: it must be a JSON list,"
        """ e.g. VEND_TRUSTED_PROXIES='["127.0.0.1", "10.0.0.0/8"]'""",
    ),
    "port-not-a-number-in-the-environment": Mistake(
        env={"VEND_PORT": "abc"},
        line="invalid VEND_PORT: Input should be a valid integer,"
        " unable to parse string as an integer",
    ),
    "port-not-a-number-in-the-file": Mistake(
        args=["--config", "{tmp}/port.toml"],
        line="invalid setting port in {tmp}/port.toml: Input should be a valid integer,"
        " unable to parse string as an integer",
    ),
    "port-out-of-range-on-the-command-line": Mistake(
        args=["--port", "70000"],
        line="invalid option --port: Input should be less than or equal to 65535",
    ),
    "port-not-a-number-on-the-command-line": Mistake(
        args=["--port", "abc"],
        line="Invalid value for '--port': 'abc' is not a valid integer.",
    ),
    "an-option-that-does-not-exist": Mistake(
        args=["--prot", "8080"],
        line="No such option '--prot'. (Did you mean one of: '--host', '--port'?)",
    ),
    "the-same-directory-listed-twice": Mistake(
        env={"VEND_MOUNTS": '["{tmp}/adir", "{tmp}/../{tmpname}/adir"]'},
        line="invalid settings: mount {tmp}/adir is listed twice"
        " (mounts 1 and 2 are the same directory): remove one",
    ),
    "port-in-use": Mistake(
        args=["--port", "{port}"],
        line="cannot listen on 127.0.0.1:{port}: address already in use",
        status=START_FAILED,
    ),
    "port-in-use-with-workers": Mistake(
        args=["--port", "{port}", "--workers", "2"],
        line="cannot listen on 127.0.0.1:{port}: address already in use",
        status=START_FAILED,
    ),
    "access-log-in-a-directory-vend-may-not-write": Mistake(
        env={"VEND_ACCESS_LOG": "{shared}/access.log"},
        line="invalid setting access_log {shared}/access.log: directory {shared} is not writable",
        as_nobody=True,
    ),
    "privileged-port-as-nobody": Mistake(
        args=["--port", "1"],
        line="cannot listen on 127.0.0.1:1: permission denied",
        status=START_FAILED,
        as_nobody=True,
    ),
    "unix-socket-in-use": Mistake(
        env={"VEND_UNIX_SOCKET": "{sock}"},
        line="cannot listen on unix:{sock}: {sock} is in use by a running server",
        status=START_FAILED,
    ),
}


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """The test's files, a TCP port it holds bound, a Unix socket it listens on; returns
    the function filling ``{tmp}``, ``{tmpname}``, ``{port}`` and ``{sock}`` into a string."""
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("not a socket\n")
    (tmp_path / "port.toml").write_text('port = "x"\n')
    shared = Path(tempfile.mkdtemp(prefix="vend-shared-"))
    shared.chmod(0o755)
    with (
        contextlib.ExitStack() as cleanup,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        port = str(tcp.getsockname()[1])
        sock = str(tmp_path / "held.sock")
        unix.bind(sock)
        unix.listen()
        cleanup.callback(shutil.rmtree, shared, ignore_errors=True)

        def fill(text: str) -> str:
            return (
                text.replace("{tmpname}", tmp_path.name)
                .replace("{tmp}", str(tmp_path))
                .replace("{port}", port)
                .replace("{sock}", sock)
                .replace("{shared}", str(shared))
            )

        yield fill


@pytest.mark.parametrize("mistake", MISTAKES.values(), ids=MISTAKES.keys())
def test_each_mistake_is_one_line_and_the_listed_status(
    mistake: Mistake, held: Callable[[str], str]
) -> None:
    """``vend serve`` prints exactly one ``vend:`` line for the mistake and exits with the
    status the README lists (2 settings, 3 start), before serving and with no traceback."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VEND_")}
    env = {**clean, **{key: held(value) for key, value in mistake.env.items()}}
    command = [str(VEND), "serve", *(held(arg) for arg in mistake.args)]
    if mistake.as_nobody:
        if os.geteuid() != 0 or (VEND.stat().st_mode & 0o005) != 0o005:
            pytest.skip("needs root, and a virtual environment nobody may run")
        command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    result = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr == f"vend: {held(mistake.line)}\n"
    assert result.stdout == ""
    assert result.returncode == mistake.status


def test_version() -> None:
    """``vend --version`` prints the package's version and exits 0."""
    from app import __version__

    result = subprocess.run([str(VEND), "--version"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"vend {__version__}\n", "")


RELOAD_MISTAKES = {
    "access-log-in-a-missing-directory": 'access_log = "{tmp}/nodir/access.log"\n',
    "access-log-is-a-directory": 'access_log = "{tmp}"\n',
    "redirect-map-missing": 'redirect_map = "{tmp}/none.txt"\n',
    "the-same-directory-listed-twice": 'mounts = ["{mount}", "{mount}/../server1"]\n',
    "log-level-unknown": 'log_level = "loud"\n',
}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("mistake", RELOAD_MISTAKES.values(), ids=RELOAD_MISTAKES.keys())
def test_a_mistake_at_reload_keeps_the_running_settings(
    mistake: str, workers: int, tmp_path: Path
) -> None:
    """The same mistakes through SIGHUP: each worker logs one refusal, vend keeps serving
    with its old settings (its access log still written, no reload counted)."""
    mount = SAMPLE_MOUNTS_DIR / "server1"
    log = tmp_path / "access.log"
    config = tmp_path / "vend.toml"
    good = f'mounts = ["{mount}"]\naccess_log = "{log}"\n'
    config.write_text(good)
    proc = VendProcess(args=["--config", str(config), "--workers", str(workers)])
    try:
        proc.start(tmp_path / "vend.out")
        bad = mistake.replace("{tmp}", str(tmp_path)).replace("{mount}", str(mount))
        key = bad.split(" =")[0]
        kept = "".join(line + "\n" for line in good.splitlines() if not line.startswith(key))
        config.write_text(kept + bad)
        os.kill(proc.pid, signal.SIGHUP)
        refusals = wait_until(
            lambda: (
                [ln for ln in proc.output().splitlines() if "reload refused" in ln]
                if proc.output().count("reload refused") >= workers
                else None
            ),
            30,
            "every worker refuses the reload",
        )
        assert len(refusals) == workers
        with proc.client() as client:
            for _ in range(2 * workers):
                assert client.get("/about.html").content == (mount / "about.html").read_bytes()
                health = client.get("/.well-known/vend/health").json()
                assert health["process"]["reloads"] == 0
                assert [m["name"] for m in health["mounts"]] == ["server1"]
        assert "Traceback" not in proc.output()
        wait_until(lambda: "GET /about.html" in log.read_text(), 10, "the old access log")
    finally:
        proc.stop()
