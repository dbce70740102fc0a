"""faultfs, the fault-injecting FUSE passthrough, and its fixtures: proven on real mounts.

Every test mounts a real FUSE filesystem served by a separate process. Readers that a
fault blocks run in daemon threads and are only ever waited for with a bound.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tools.fuse_fixtures import FaultFS, find_mount, read_mountinfo

pytestmark = pytest.mark.fuse

REPO = Path(__file__).resolve().parents[2]
BIG_BYTES = 1024 * 1024
# Bounds for "it did not finish" and "it finished": generous, as CI machines are slow.
STILL_BLOCKED_S = 1.0
RELEASED_WITHIN_S = 5.0
TEARDOWN_BOUND_S = 15.0

StartFaultFS = Callable[..., FaultFS]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small tree to mirror: text, 1 MiB of random bytes, a subdirectory, a symlink."""
    root = tmp_path / "source"
    (root / "dir").mkdir(parents=True)
    (root / "small.txt").write_bytes(b"hello, faultfs\n")
    (root / "big.bin").write_bytes(random.Random(4).randbytes(BIG_BYTES))
    (root / "dir" / "a.txt").write_bytes(b"a\n")
    (root / "dir" / "b.txt").write_bytes(b"bb\n")
    (root / "link").symlink_to("small.txt")
    return root


@pytest.fixture
def fs(faultfs: StartFaultFS, source: Path) -> FaultFS:
    """A faultfs mount of ``source`` whose names are all looked up once already.

    libfuse 3.14 never grants parallel directory operations, so a first lookup of a
    name waits behind any first lookup hung in the same directory; names already in the
    dentry cache are revalidated without that lock, as on NFS.
    """
    handle = faultfs(source)
    for parent, dirs, files in os.walk(handle.mountpoint):
        for name in dirs + files:
            os.lstat(os.path.join(parent, name))
    return handle


class Reader:
    """Run one call in a daemon thread and keep its outcome (value or OSError)."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.outcome: list[Any] = []

        def run() -> None:
            try:
                self.outcome.append(call())
            except OSError as exc:
                self.outcome.append(exc)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finished_within(self, seconds: float) -> bool:
        """Wait at most ``seconds`` and tell whether the call has returned."""
        self.thread.join(seconds)
        return not self.thread.is_alive()


def errno_of(call: Callable[[], Any]) -> int | None:
    """Run ``call`` and return the errno it failed with, or None if it succeeded."""
    try:
        call()
    except OSError as exc:
        return exc.errno
    return None


def size_of(path: Path) -> int:
    """Return the size in bytes that ``stat`` reports for ``path``."""
    return os.stat(path).st_size


def is_running(pid: int) -> bool:
    """Tell whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``predicate`` every 50 ms for at most ``timeout_s``; return its last value."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_mirrors_bytes_names_and_metadata(fs: FaultFS, source: Path) -> None:
    """Every file reads back byte for byte, with the source's names, sizes, times and inodes."""
    mnt = fs.mountpoint
    assert find_mount(mnt) is not None
    assert find_mount(mnt).fstype == "fuse.faultfs"  # type: ignore[union-attr]
    for rel in ("small.txt", "big.bin", "dir/a.txt", "dir/b.txt"):
        assert (mnt / rel).read_bytes() == (source / rel).read_bytes(), rel
        mirrored, real = os.stat(mnt / rel), os.stat(source / rel)
        assert (mirrored.st_size, mirrored.st_mtime_ns, mirrored.st_mode, mirrored.st_ino) == (
            real.st_size,
            real.st_mtime_ns,
            real.st_mode,
            real.st_ino,
        )
    assert sorted(os.listdir(mnt)) == sorted(os.listdir(source))
    assert sorted(os.listdir(mnt / "dir")) == ["a.txt", "b.txt"]
    assert os.readlink(mnt / "link") == "small.txt"
    assert (mnt / "link").read_bytes() == b"hello, faultfs\n"
    with open(mnt / "big.bin", "rb") as big:
        assert (
            os.pread(big.fileno(), 1000, 700_000)
            == (source / "big.bin").read_bytes()[700_000:701_000]
        )


def test_source_changes_show_at_once(fs: FaultFS, source: Path) -> None:
    """With kernel caching off, a change to the source is seen by the very next call."""
    mnt = fs.mountpoint
    assert (mnt / "small.txt").read_bytes() == b"hello, faultfs\n"
    with open(source / "small.txt", "ab") as grow:
        grow.write(b"more\n")
    assert os.stat(mnt / "small.txt").st_size == len(b"hello, faultfs\nmore\n")
    assert (mnt / "small.txt").read_bytes() == b"hello, faultfs\nmore\n"
    (source / "new.txt").write_bytes(b"new\n")
    assert (mnt / "new.txt").read_bytes() == b"new\n"
    (source / "new.txt").unlink()
    assert errno_of(lambda: os.stat(mnt / "new.txt")) == errno.ENOENT


def test_writes_are_refused(fs: FaultFS) -> None:
    """Opening a file for writing fails with EROFS: the mirror is read-only."""

    def append() -> None:
        with open(fs.mountpoint / "small.txt", "ab") as small:
            small.write(b"x")

    assert errno_of(append) == errno.EROFS


def test_allow_other_enforces_the_mirrored_modes(faultfs: StartFaultFS, source: Path) -> None:
    """With allow_other, nobody reads a 0644 file but is refused a 0600 one, as on NFS."""
    (source / "private.txt").write_bytes(b"secret\n")
    (source / "private.txt").chmod(0o600)
    (source / "small.txt").chmod(0o644)
    fs = faultfs(source, allow_other=True)

    def cat_as_nobody(name: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["cat", str(fs.mountpoint / name)],
            user="nobody",
            capture_output=True,
            timeout=30,
            check=False,
        )

    assert cat_as_nobody("small.txt").stdout == b"hello, faultfs\n"
    refused = cat_as_nobody("private.txt")
    assert refused.returncode != 0
    assert b"Permission denied" in refused.stderr
    assert (fs.mountpoint / "private.txt").read_bytes() == b"secret\n"


CALLS: dict[str, Callable[[Path], Any]] = {
    "read": lambda mnt: (mnt / "small.txt").read_bytes(),
    "getattr": lambda mnt: os.stat(mnt / "small.txt"),
    "open": lambda mnt: os.close(os.open(mnt / "small.txt", os.O_RDONLY)),
    "readdir": lambda mnt: os.listdir(mnt / "dir"),
}
TARGETS = {"read": "/small.txt", "getattr": "/small.txt", "open": "/small.txt", "readdir": "/dir"}


@pytest.mark.parametrize("kind", ["EIO", "ESTALE", "ENOTCONN"])
@pytest.mark.parametrize("op", sorted(CALLS))
def test_errno_fault_reaches_the_caller(fs: FaultFS, op: str, kind: str) -> None:
    """An errno injected on one operation and path is what the caller's syscall fails with."""
    call, mnt = CALLS[op], fs.mountpoint
    assert errno_of(lambda: call(mnt)) is None
    rule = fs.inject(op, TARGETS[op], kind)
    assert errno_of(lambda: call(mnt)) == getattr(errno, kind)
    assert (mnt / "dir" / "a.txt").read_bytes() == b"a\n"
    assert fs.lift(rule) == 1
    assert errno_of(lambda: call(mnt)) is None


@pytest.mark.parametrize(
    ("syscall", "warm", "firings"),
    [("stat", False, 2), ("stat", True, 3), ("open", False, 2), ("open", True, 2)],
    ids=["stat-new-name", "stat-known-name", "open-new-name", "open-known-name"],
)
def test_kernel_absorbs_estale_retries(
    fs: FaultFS, source: Path, syscall: str, warm: bool, firings: int
) -> None:
    """User space sees one ESTALE only once the VFS's own LOOKUP_REVAL retry is used up too."""
    op = "getattr" if syscall == "stat" else "open"
    for count, first in ((firings - 1, None), (firings, errno.ESTALE)):
        path = fs.mountpoint / f"fresh-{count}.txt"
        (source / path.name).write_bytes(b"x\n")
        if warm:
            os.stat(path)

        def call(path: Path = path) -> None:
            if syscall == "stat":
                os.stat(path)
            else:
                os.close(os.open(path, os.O_RDONLY))

        fs.inject(op, f"/{path.name}", "ESTALE", count=count)
        assert errno_of(call) == first, f"count={count}"
        assert errno_of(call) is None
        fs.lift()


def test_glob_selects_paths(fs: FaultFS) -> None:
    """A rule for ``/dir/*`` fails the names below /dir and nothing else, /dir included."""
    mnt = fs.mountpoint
    fs.inject("getattr", "/dir/*", "EIO")
    assert errno_of(lambda: os.stat(mnt / "dir" / "a.txt")) == errno.EIO
    assert errno_of(lambda: os.stat(mnt / "dir" / "b.txt")) == errno.EIO
    assert errno_of(lambda: os.stat(mnt / "dir")) is None
    assert errno_of(lambda: os.stat(mnt / "small.txt")) is None


def test_lookup_is_getattr(fs: FaultFS) -> None:
    """``lookup`` is accepted as libfuse's name for it: ``getattr``."""
    fs.inject("lookup", "/small.txt", "EIO")
    assert [f["op"] for f in fs.faults()] == ["getattr"]
    assert errno_of(lambda: os.stat(fs.mountpoint / "small.txt")) == errno.EIO


def test_count_limits_firings(fs: FaultFS) -> None:
    """A rule with count=2 fails exactly two reads, then lets reads through."""
    small = fs.mountpoint / "small.txt"
    fs.inject("read", "/small.txt", "EIO", count=2)
    outcomes = [errno_of(small.read_bytes) for _ in range(3)]
    assert outcomes == [errno.EIO, errno.EIO, None]
    [rule] = fs.faults()
    assert (rule["fired"], rule["remaining"]) == (2, 0)


def test_min_offset_fails_mid_file(fs: FaultFS, source: Path) -> None:
    """A read rule with min_offset lets the head of a file through and fails the rest."""
    fs.inject("read", "/big.bin", "EIO", min_offset=256 * 1024)
    expected = (source / "big.bin").read_bytes()
    with open(fs.mountpoint / "big.bin", "rb", buffering=0) as big:
        assert os.pread(big.fileno(), 65536, 0) == expected[:65536]
        assert errno_of(lambda: os.pread(big.fileno(), 65536, 256 * 1024)) == errno.EIO
        received = b""
        with pytest.raises(OSError) as failed:
            for _ in range(BIG_BYTES // 4096 + 1):
                chunk = big.read(4096)
                assert chunk, "reached the end of the file without the fault"
                received += chunk
    assert failed.value.errno == errno.EIO
    assert received == expected[: len(received)]
    assert 0 < len(received) <= 256 * 1024


@pytest.mark.parametrize(
    ("op", "path", "call", "expected"),
    [
        ("read", "/big.bin", lambda mnt: len((mnt / "big.bin").read_bytes()), BIG_BYTES),
        ("getattr", "/big.bin", lambda mnt: os.stat(mnt / "big.bin").st_size, BIG_BYTES),
    ],
    ids=["read", "getattr"],
)
def test_hang_blocks_the_caller_until_lifted(
    fs: FaultFS, op: str, path: str, call: Callable[[Path], Any], expected: Any
) -> None:
    """A hung call blocks its thread, shown by thread id, while other names are served; lift frees it."""
    fs.inject(op, path, "hang")
    reader = Reader(lambda: call(fs.mountpoint))
    [held] = fs.wait_hung(1, timeout_s=RELEASED_WITHIN_S)
    assert (held.op, held.path, held.kind) == (op, path, "hang")
    assert (held.tid, held.pid) == (reader.thread.native_id, os.getpid())
    assert not reader.finished_within(STILL_BLOCKED_S)
    other = Reader((fs.mountpoint / "dir" / "a.txt").read_bytes)
    assert other.finished_within(RELEASED_WITHIN_S)
    assert other.outcome == [b"a\n"]
    assert reader.thread.is_alive(), "the hang ended before it was lifted"
    assert fs.lift() == 1
    assert reader.finished_within(RELEASED_WITHIN_S)
    assert reader.outcome == [expected]
    assert fs.hung() == []


def test_delay_delays_then_answers(fs: FaultFS) -> None:
    """A 0.5 s delay on read makes the read take at least 0.5 s and return the real bytes."""
    small = fs.mountpoint / "small.txt"
    fs.inject("read", "/small.txt", "delay", seconds=0.5)
    started = time.monotonic()
    assert small.read_bytes() == b"hello, faultfs\n"
    assert 0.5 <= time.monotonic() - started < 0.5 + RELEASED_WITHIN_S


def test_errno_after_seconds(fs: FaultFS) -> None:
    """An errno kind with seconds waits that long, then fails, like a soft mount's timeout."""
    fs.inject("getattr", "/small.txt", "ETIMEDOUT", seconds=0.5)
    started = time.monotonic()
    assert errno_of(lambda: os.stat(fs.mountpoint / "small.txt")) == errno.ETIMEDOUT
    assert time.monotonic() - started >= 0.5


def test_lift_cuts_a_delay_short(fs: FaultFS) -> None:
    """Lifting a 60 s delay releases the delayed call at once, with the real bytes."""
    fs.inject("read", "/small.txt", "delay", seconds=60)
    reader = Reader((fs.mountpoint / "small.txt").read_bytes)
    [held] = fs.wait_hung(1, timeout_s=RELEASED_WITHIN_S)
    assert held.kind == "delay"
    fs.lift()
    assert reader.finished_within(RELEASED_WITHIN_S)
    assert reader.outcome == [b"hello, faultfs\n"]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("bogus", "*", "EIO"), {}),
        (("read", "*", "EWHATEVER"), {}),
        (("read", "*", "delay"), {}),
        (("read", "*", "hang", 1.0), {}),
        (("read", "*", "EIO"), {"count": 0}),
    ],
    ids=["unknown-op", "unknown-errno", "delay-without-seconds", "hang-with-seconds", "count-0"],
)
def test_invalid_faults_are_refused(fs: FaultFS, args: tuple[Any, ...], kwargs: Any) -> None:
    """A fault the server cannot honour raises ValueError and leaves no rule behind."""
    with pytest.raises(ValueError):
        fs.inject(*args, **kwargs)
    assert fs.faults() == []


def test_teardown_with_a_hung_reader_unmounts(fs: FaultFS) -> None:
    """Closing with a reader hung in read() lifts the hang, then unmounts cleanly."""
    fs.inject("read", "/big.bin", "hang")
    reader = Reader(lambda: len((fs.mountpoint / "big.bin").read_bytes()))
    fs.wait_hung(1, timeout_s=RELEASED_WITHIN_S)
    started = time.monotonic()
    steps = fs.close()
    assert time.monotonic() - started < TEARDOWN_BOUND_S
    assert steps == ["lift", "unmount"]
    assert reader.finished_within(RELEASED_WITHIN_S)
    assert reader.outcome == [BIG_BYTES]
    assert find_mount(fs.mountpoint) is None
    assert fs.process.poll() is not None


def test_teardown_with_a_descriptor_held_open(fs: FaultFS) -> None:
    """A descriptor kept open through close() forces a lazy unmount and an abort, in bounded time."""
    descriptor = os.open(fs.mountpoint / "big.bin", os.O_RDONLY)
    try:
        fs.inject("read", "/big.bin", "hang")
        reader = Reader(lambda: len(os.pread(descriptor, 4096, 0)))
        fs.wait_hung(1, timeout_s=RELEASED_WITHIN_S)
        started = time.monotonic()
        steps = fs.close()
        assert time.monotonic() - started < TEARDOWN_BOUND_S
        assert steps[0] == "lift"
        assert "lazy unmount" in steps and "abort" in steps, steps
        assert reader.finished_within(RELEASED_WITHIN_S)
        assert reader.outcome == [4096]
        assert errno_of(lambda: os.pread(descriptor, 10, 0)) == errno.ENOTCONN
    finally:
        with pytest.raises(OSError):  # the connection is gone: even close() says so
            os.close(descriptor)
    assert find_mount(fs.mountpoint) is None
    assert fs.process.poll() is not None


def test_teardown_aborts_a_wedged_server(fs: FaultFS) -> None:
    """A server that answers nothing (stopped) is aborted through fusectl and killed, in bounded time."""
    descriptor = os.open(fs.mountpoint / "big.bin", os.O_RDONLY)
    try:
        fs.inject("read", "/big.bin", "hang")
        reader = Reader(lambda: os.pread(descriptor, 4096, 0))
        fs.wait_hung(1, timeout_s=RELEASED_WITHIN_S)
        os.kill(fs.pid, signal.SIGSTOP)
        started = time.monotonic()
        steps = fs.close()
        assert time.monotonic() - started < TEARDOWN_BOUND_S
        assert "abort" in steps, steps
        assert reader.finished_within(RELEASED_WITHIN_S)
        [failure] = reader.outcome
        assert isinstance(failure, OSError)
        assert failure.errno in (errno.ECONNABORTED, errno.ENOTCONN)
    finally:
        with pytest.raises(OSError):  # the connection is gone: even close() says so
            os.close(descriptor)
    assert find_mount(fs.mountpoint) is None
    assert fs.process.poll() is not None


STAT_UNTIL_KILLED = """
import os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: None)
os.stat(sys.argv[1])
"""

EXIT_WITH_A_HUNG_THREAD = """
import os, sys, threading
threading.Thread(target=os.stat, args=(sys.argv[1],), daemon=True).start()
sys.stdin.readline()
os._exit(0)
"""


def test_a_killed_caller_is_let_go(fs: FaultFS) -> None:
    """A caller hung on the mount ignores SIGTERM but dies on SIGKILL, as on an NFS hard mount."""
    fs.inject("getattr", "/small.txt", "hang")
    child = subprocess.Popen([sys.executable, "-c", STAT_UNTIL_KILLED, fs.mountpoint / "small.txt"])
    try:
        [held] = fs.wait_hung(1, timeout_s=RELEASED_WITHIN_S)
        assert held.pid == child.pid
        child.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=STILL_BLOCKED_S)
        assert len(fs.hung()) == 1
        child.kill()
        assert child.wait(timeout=RELEASED_WITHIN_S) == -signal.SIGKILL
        assert fs.hung() == []
        assert len(fs.faults()) == 1
    finally:
        child.kill()
        fs.lift()
        child.wait(timeout=RELEASED_WITHIN_S)


def test_a_process_exits_with_a_thread_hung(fs: FaultFS) -> None:
    """A process whose other thread hangs on the mount can still exit (vend's shutdown)."""
    fs.inject("getattr", "/small.txt", "hang")
    child = subprocess.Popen(
        [sys.executable, "-c", EXIT_WITH_A_HUNG_THREAD, fs.mountpoint / "small.txt"],
        stdin=subprocess.PIPE,
    )
    try:
        [held] = fs.wait_hung(1, timeout_s=RELEASED_WITHIN_S)
        assert held.pid == child.pid and held.tid != child.pid
        assert child.stdin is not None
        child.stdin.write(b"exit\n")
        child.stdin.close()
        assert child.wait(timeout=RELEASED_WITHIN_S) == 0
    finally:
        child.kill()
        fs.lift()
        child.wait(timeout=RELEASED_WITHIN_S)


CHILD_TEST = """
import json, os, pathlib, threading

def test_fails_with_a_hung_reader(faultfs):
    fs = faultfs(os.environ["FAULTFS_SOURCE"])
    fs.inject("read", "/small.txt", "hang")
    threading.Thread(target=(fs.mountpoint / "small.txt").read_bytes, daemon=True).start()
    fs.wait_hung(1)
    report = {"mountpoint": str(fs.mountpoint), "pid": fs.pid}
    pathlib.Path(os.environ["FAULTFS_REPORT"]).write_text(json.dumps(report))
    assert False, "fails on purpose, with the mount hung"
"""


def test_a_failing_test_still_unmounts(tmp_path: Path, source: Path) -> None:
    """The fixture unmounts and stops the server when the test using it fails mid-hang."""
    (tmp_path / "test_child.py").write_text(textwrap.dedent(CHILD_TEST))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    report = tmp_path / "report.json"
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "FAULTFS_SOURCE": str(source),
        "FAULTFS_REPORT": str(report),
    }
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.tools.fuse_fixtures",
            "-p",
            "no:cacheprovider",
            "-c",
            str(tmp_path / "pytest.ini"),
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 1, child.stdout + child.stderr
    assert "1 failed" in child.stdout
    started = json.loads(report.read_text())
    assert all(m.mountpoint != started["mountpoint"] for m in read_mountinfo())
    assert not is_running(started["pid"])


ORPHAN = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from tests.tools.fuse_fixtures import FaultFS
fs = FaultFS.start(sys.argv[2])
fs.inject("read", "*", "hang")
print(json.dumps({"mountpoint": str(fs.mountpoint), "pid": fs.pid}), flush=True)
os._exit(0)
"""


def test_server_of_a_dead_parent_unmounts(source: Path) -> None:
    """If the process that started faultfs dies without closing it, the mount still goes."""
    parent = subprocess.run(
        [sys.executable, "-c", ORPHAN, str(REPO), str(source)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    started = json.loads(parent.stdout)
    mountpoint = started["mountpoint"]
    assert wait_until(lambda: find_mount(mountpoint) is None, RELEASED_WITHIN_S)
    assert wait_until(lambda: not is_running(started["pid"]), RELEASED_WITHIN_S)
    shutil.rmtree(Path(mountpoint).parent)


@pytest.fixture
def many(tmp_path: Path) -> Iterator[Path]:
    """A source with 40 small files in one directory."""
    root = tmp_path / "many"
    (root / "d").mkdir(parents=True)
    for i in range(40):
        (root / "d" / f"f{i}").write_bytes(b"%d\n" % i)
    yield root


def test_many_calls_hang_at_once(faultfs: StartFaultFS, many: Path) -> None:
    """Forty callers can hang at once while a call to another name is still answered."""
    fs = faultfs(many)
    for i in range(40):
        os.stat(fs.mountpoint / "d" / f"f{i}")
    fs.inject("getattr", "/d/f*", "hang")
    readers = [Reader(functools.partial(size_of, fs.mountpoint / "d" / f"f{i}")) for i in range(40)]
    held = fs.wait_hung(40, timeout_s=RELEASED_WITHIN_S)
    assert {h.tid for h in held} == {r.thread.native_id for r in readers}
    assert os.stat(fs.mountpoint / "d").st_nlink >= 2
    fs.lift()
    assert all(r.finished_within(RELEASED_WITHIN_S) for r in readers)
    assert sorted(r.outcome[0] for r in readers) == sorted(len(b"%d\n" % i) for i in range(40))
