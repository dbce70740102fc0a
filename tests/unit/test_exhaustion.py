"""EMFILE, ENFILE and ENOMEM are the process's trouble: a mount's state never changes."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.federation import exhaustion
from app.federation import open as open_module
from app.federation import root as root_module
from app.federation.mount import Mount, State
from app.federation.open import MountUnavailable
from app.settings import MountSettings

CODES = [errno.EMFILE, errno.ENFILE, errno.ENOMEM]


def _mount(tmp_path: Path) -> Mount:
    (tmp_path / "a.txt").write_bytes(b"hello\n")
    mount = Mount(settings=MountSettings(path=tmp_path), fs_op_s=5.0, threads=2)
    assert asyncio.run(mount.probe())
    return mount


def _failing(real: Callable[..., Any], code: int, on_call: int) -> Callable[..., Any]:
    """``real``, except that its ``on_call``-th call fails with ``code``."""
    calls = [0]

    def fn(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == on_call:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    return fn


def _state(mount: Mount) -> tuple[State, bool, str | None, str | None]:
    return mount.state(), mount.up, mount.last_error, mount.real_root


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize(("path", "on_call"), [("lookup", 1), ("open", 2)])
def test_lookup_and_open_leave_the_mount_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, path: str, on_call: int
) -> None:
    """The O_PATH lookup (first open) or the reopen for reading (second) failing with
    exhaustion: 503-worthy MountUnavailable, counted, and the mount stays up; the next
    lookup succeeds."""
    mount = _mount(tmp_path)
    before = _state(mount)
    counted = sum(exhaustion.EXHAUSTED.values())
    monkeypatch.setattr(open_module.os, "open", _failing(os.open, code, on_call))
    with pytest.raises(MountUnavailable) as caught:
        asyncio.run(mount.lookup("a.txt", max_read_bytes=1024))
    assert str(caught.value) == errno.errorcode[code]
    assert _state(mount) == before == (State.UP, True, None, str(tmp_path))
    assert sum(exhaustion.EXHAUSTED.values()) == counted + 1
    monkeypatch.undo()
    found = asyncio.run(mount.lookup("a.txt", max_read_bytes=1024))
    assert getattr(found, "body", None) == b"hello\n"
    mount.close()


@pytest.mark.parametrize("code", CODES)
def test_probe_leaves_the_mount_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """A probe whose open of the root fails with exhaustion returns False and changes
    nothing: the mount is not declared down."""
    mount = _mount(tmp_path)
    before = _state(mount)
    monkeypatch.setattr(root_module.os, "open", _failing(os.open, code, 1))
    assert asyncio.run(mount.probe()) is False
    assert _state(mount) == before
    mount.close()


@pytest.mark.parametrize("code", CODES)
def test_send_leaves_the_mount_alone(tmp_path: Path, code: int) -> None:
    """A body read (the send path's call in the mount's threads) failing with exhaustion
    leaves the mount up, while EIO on the same path opens the breaker."""
    mount = _mount(tmp_path)
    before = _state(mount)

    def read() -> bytes:
        raise OSError(code, os.strerror(code))

    with pytest.raises(MountUnavailable):
        asyncio.run(mount.call(read))
    assert _state(mount) == before

    def broken() -> bytes:
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(MountUnavailable):
        asyncio.run(mount.call(broken))
    assert mount.state() is State.DOWN and mount.last_error == "EIO"
    mount.close()


def test_only_exhaustion_errnos_are_exhaustion() -> None:
    """EMFILE, ENFILE, ENOMEM are; EIO, ENOENT, ETIMEDOUT are not."""
    assert all(exhaustion.is_exhaustion(c) for c in CODES)
    assert not any(exhaustion.is_exhaustion(c) for c in (errno.EIO, errno.ENOENT, None))


def test_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    """Two exhaustions in a row log one line, naming the limit and descriptors in use."""
    exhaustion._last_logged[0] = -exhaustion.LOG_INTERVAL_S - 1e9
    with caplog.at_level("ERROR", logger="vend.exhaustion"):
        exhaustion.note_exhaustion(errno.EMFILE, "lookup")
        exhaustion.note_exhaustion(errno.EMFILE, "lookup")
    lines = [r.getMessage() for r in caplog.records if r.name == "vend.exhaustion"]
    assert len(lines) == 1
    assert "EMFILE" in lines[0] and "descriptor limit" in lines[0] and "in use" in lines[0]


def test_metric_counts_exhaustion() -> None:
    """A scrape shows the exhaustions counted since the last one, by errno name."""
    from app.ops.metrics import Metrics

    metrics = Metrics()
    first = metrics.render().decode()
    before = _sample(first, "ENFILE")
    exhaustion.note_exhaustion(errno.ENFILE, "send")
    exhaustion.note_exhaustion(errno.ENFILE, "send")
    assert _sample(metrics.render().decode(), "ENFILE") == before + 2


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'vend_resource_exhaustion_total{{errno="{name}"}}'):
            return float(line.split()[-1])
    return 0.0
