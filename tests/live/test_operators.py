"""What operators do: the vend command's exit codes and output, the access log, permissions."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.settings import SAMPLE_MOUNTS_DIR
from tests.support import VEND, get_raw, read_log_lines, wait_until

pytestmark = pytest.mark.live


def _vend(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VEND_")}
    return subprocess.run(
        [str(VEND), *args], env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60
    )


def test_serve_with_no_settings_serves_the_samples(start_vend: Any) -> None:
    """Plain `vend serve` prints a sample URL and serves every sample type byte-exact."""
    proc = start_vend(None)
    assert re.search(r"try http://127\.0\.0\.1:\d+/about\.html", proc.output())
    with proc.client() as client:
        about = client.get("/about.html")
        assert about.content == (SAMPLE_MOUNTS_DIR / "server1" / "about.html").read_bytes()
        for name, media_type in (
            ("images/logo.png", "image/png"),
            ("docs/manual.pdf", "application/pdf"),
            ("css/site.css", "text/css"),
            ("js/app.js", "text/javascript"),
            ("js/jquery.min.js", "text/javascript"),
        ):
            response = client.get(f"/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"] == media_type
            on_disk = next(p for p in SAMPLE_MOUNTS_DIR.glob(f"*/{name}"))
            assert response.content == on_disk.read_bytes()


def test_serve_refuses_invalid_settings_in_one_line() -> None:
    """Invalid settings: exit 2 and one line naming the field, no traceback."""
    result = _vend("serve", env={"VEND_PORT": "70000"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "VEND_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_each_mount(tmp_path: Path) -> None:
    """`vend check` shows every mount with its filesystem; exit 0 all usable, 1 otherwise."""
    good = _vend("check")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "server1" in good.stdout and "server2" in good.stdout and "filesystem=" in good.stdout
    mounts = f'["{SAMPLE_MOUNTS_DIR / "server1"}", "{tmp_path / "missing"}"]'
    bad = _vend("check", env={"VEND_MOUNTS": mounts})
    assert bad.returncode == 1
    assert "UNUSABLE (ENOENT)" in bad.stdout
    config = tmp_path / "bad.toml"
    config.write_text("mounts = 3\n")
    assert _vend("check", "--config", str(config)).returncode == 2


def test_locate_names_the_serving_mount_and_shadowed_copies() -> None:
    """`vend locate` says which mount serves a name and which copies it shadows."""
    shadowed = _vend("locate", "about.html")
    assert shadowed.returncode == 0
    assert re.search(r"^server1: serves \(\d+ bytes", shadowed.stdout, re.M)
    assert re.search(r"^server2: shadowed", shadowed.stdout, re.M)
    assert _vend("locate", "/docs/manual.pdf").stdout.splitlines() == [
        "server1: absent",
        _vend("locate", "docs/manual.pdf").stdout.splitlines()[1],
    ]
    assert _vend("locate", "nothing-here.txt").returncode == 1
    assert _vend("locate", "../etc/passwd").returncode == 2
    assert _vend("locate", ".htaccess").returncode == 2


def test_access_log_combined_format_with_mount_and_duration(
    tmp_path: Path, start_vend: Any
) -> None:
    """Each request is one combined-format line plus the mount and microseconds; XFF trusted."""
    log = tmp_path / "access.log"
    proc = start_vend(None, {"access_log": str(log)})
    with proc.client() as client:
        client.get("/about.html", headers={"User-Agent": 'ua "quoted"', "Referer": "http://ref/"})
        client.get("/nothing.txt", headers={"X-Forwarded-For": "203.0.113.9"})
        client.get("/nothing.txt", headers={"X-Forwarded-For": '1.2.3.4" - - [fake'})
    get_raw(proc.port, b'/q"x.txt', extra=b'User-Agent: evil\xff"\r\n')
    lines = read_log_lines(log, 4)
    assert len(lines) == 4
    first = re.fullmatch(
        r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /about\.html HTTP/1\.1" 200 (\d+)'
        r' "http://ref/" "ua \\x22quoted\\x22" server1 (\d+)',
        lines[0],
    )
    assert first, lines[0]
    assert int(first.group(1)) == (SAMPLE_MOUNTS_DIR / "server1" / "about.html").stat().st_size
    assert lines[1].startswith("203.0.113.9 - - [") and '" 404 10 "-"' in lines[1]
    assert lines[1].split()[-2] == "-"
    # The forged quote and spaces are escaped: the line keeps its fields (host, ident, user).
    assert lines[2].startswith("1.2.3.4\\x22\\x20-\\x20-\\x20[fake - - ["), lines[2]
    lines.pop(2)
    assert '"GET /q\\x22x.txt HTTP/1.1" 400' in lines[2], lines[2]
    assert '"evil\\xff\\x22"' in lines[2]


def test_forwarded_for_ignored_from_untrusted_peers(tmp_path: Path, start_vend: Any) -> None:
    """With trusted_proxies empty, X-Forwarded-For is not believed: the peer is logged."""
    log = tmp_path / "access.log"
    proc = start_vend(None, {"access_log": str(log), "trusted_proxies": []})
    with proc.client() as client:
        client.get("/about.html", headers={"X-Forwarded-For": "203.0.113.9"})
    assert read_log_lines(log, 1)[0].startswith("127.0.0.1 - - [")


@pytest.fixture
def world_readable_tree() -> Iterator[Path]:
    """A content tree an unprivileged user can traverse, with one file only root may read."""
    base = Path(tempfile.mkdtemp(prefix="vend-perm-"))
    try:
        base.chmod(0o755)
        mount = base / "m1"
        mount.mkdir()
        mount.chmod(0o755)
        (mount / "open.txt").write_text("readable")
        (mount / "open.txt").chmod(0o644)
        (mount / "secret.txt").write_text("root only")
        (mount / "secret.txt").chmod(0o600)
        yield base
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody"
)
def test_permission_denied_is_403_for_an_unprivileged_vend(
    world_readable_tree: Path, start_vend: Any
) -> None:
    """vend running as nobody answers 403 for a file it may not read, and serves the others."""
    if not os.access(VEND, os.X_OK) or (VEND.stat().st_mode & 0o005) != 0o005:
        pytest.skip("the virtual environment is not readable by nobody")
    proc = start_vend(
        [str(world_readable_tree / "m1")],
        command=[
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            str(VEND),
            "serve",
            "--port",
            "{port}",
        ],
    )
    with proc.client() as client:
        assert client.get("/open.txt").text == "readable"
        denied = client.get("/secret.txt")
    assert denied.status_code == 403 and denied.text == "Forbidden\n"


def test_sigterm_drain_keeps_serving_with_health_503(start_vend: Any) -> None:
    """With timeouts.drain_s, SIGTERM first drains: health 503, files still served with
    Connection: close; then vend exits."""
    import signal

    drain_s = 5.0  # long enough to be seen draining on a busy machine
    proc = start_vend(None, {"timeouts": {"drain_s": drain_s}})
    os.killpg(proc.pid, signal.SIGTERM)
    with proc.client() as client:
        # Health answers 200 until vend has taken the signal, then 503 while it drains.
        def draining() -> Any:
            answer = client.get("/.well-known/vend/health")
            return answer if answer.status_code == 503 else None

        health = wait_until(draining, drain_s, "health 503 after SIGTERM")
        about = client.get("/about.html")
    assert health.json()["status"] == "draining"
    assert about.status_code == 200 and about.headers["connection"] == "close"
    assert proc.proc is not None
    proc.proc.wait(timeout=drain_s + 30)
    assert proc.proc.returncode == 0


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_serve_exits_0_when_stopped(start_vend: Any, signame: str) -> None:
    """vend serve stopped by SIGTERM or SIGINT exits 0, as the README says, with no "Aborted!"."""
    import signal

    proc = start_vend(None)
    with proc.client() as client:
        assert client.get("/about.html").status_code == 200
    assert proc.proc is not None
    os.kill(proc.pid, getattr(signal, signame))
    proc.proc.wait(timeout=20)
    assert proc.proc.returncode == 0
    assert proc.output_path is not None
    assert "Aborted" not in proc.output_path.read_text()


def test_mount_up_metric_follows_the_background_probe(tmp_path: Path, start_vend: Any) -> None:
    """With no request at all, a mount that disappears shows as down in health and metrics."""
    mount = tmp_path / "m1"
    mount.mkdir()
    proc = start_vend([str(mount)], {"timeouts": {"probe_interval_s": 0.2}})
    with proc.client() as client:
        assert 'vend_mount_up{mount="m1"} 1.0' in client.get("/.well-known/vend/metrics").text
        mount.rmdir()
        deadline = time.monotonic() + 5
        while 'vend_mount_up{mount="m1"} 0.0' not in client.get("/.well-known/vend/metrics").text:
            assert time.monotonic() < deadline, "vend_mount_up still 1 after the probe saw ENOENT"
            time.sleep(0.1)
        assert client.get("/.well-known/vend/health").json()["mounts"][0]["state"] == "down"


def test_reload_removes_metric_label_sets_of_removed_mounts(
    tmp_path: Path, start_vend: Any
) -> None:
    """A SIGHUP that removes a mount removes its label sets from /metrics; others keep
    their names (a default name depends on the mount's own path only)."""
    roots = [tmp_path / f"server{i}" / "content" for i in (1, 2, 3)]
    for i, root in enumerate(roots, 1):
        root.mkdir(parents=True)
        (root / f"on-{i}.txt").write_bytes(b"x")
    config = tmp_path / "vend.toml"
    config.write_text(f"mounts = {json.dumps([str(r) for r in roots])}\n")
    proc = start_vend(None, args=["--config", str(config)])
    with proc.client() as client:
        for i in (1, 2, 3):
            assert client.get(f"/on-{i}.txt").status_code == 200
        before = client.get("/.well-known/vend/metrics").text
        assert 'vend_mount_lookups_total{mount="server2",outcome="hit"}' in before
        config.write_text(f"mounts = {json.dumps([str(roots[0]), str(roots[2])])}\n")
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while 'mount="server2"' in client.get("/.well-known/vend/metrics").text:
            assert time.monotonic() < deadline, "server2's label sets still in /metrics"
            time.sleep(0.1)
        names = [m["name"] for m in client.get("/.well-known/vend/health").json()["mounts"]]
        assert names == ["server1", "server3"]
        assert 'vend_mount_up{mount="server3"} 1.0' in client.get("/.well-known/vend/metrics").text
        # Two mounts whose default names clash: the reload is refused in one line naming both.
        clash = tmp_path / "other" / "server1"
        clash.mkdir(parents=True)
        config.write_text(f"mounts = {json.dumps([str(roots[0]), str(clash)])}\n")
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload refused" not in proc.output():
            assert time.monotonic() < deadline, "the clashing names refused"
            time.sleep(0.1)
        refused = [line for line in proc.output().splitlines() if "reload refused" in line]
        assert str(roots[0]) in refused[0] and str(clash) in refused[0], refused
        names = [m["name"] for m in client.get("/.well-known/vend/health").json()["mounts"]]
        assert names == ["server1", "server3"]
