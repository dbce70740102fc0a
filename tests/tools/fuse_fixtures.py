"""pytest fixtures that mount faultfs and always take it down again.

``faultfs`` (the fixture) is a factory: ``fs = faultfs(source_dir)`` mounts a faultfs
server (``tests/tools/faultfs.py``, run as a separate process so the test process never
serves its own mount) and returns a :class:`FaultFS` handle::

    fs = faultfs(source_dir)
    fs.inject("read", "/big.bin", "EIO")       # every read of /big.bin fails with EIO
    fs.inject("getattr", "/a/*", "hang")       # stat under /a blocks ...
    fs.wait_hung(1)                            # ... shown by the server, caller's tid included
    fs.lift()                                  # ... until lifted

At teardown, whether the test passed or not, each handle is closed: faults lifted,
``fusermount3 -u``, then ``fusermount3 -uz``, then an abort through the FUSE control
filesystem (``/sys/fs/fuse/connections/N/abort``, mounting ``fusectl`` if needed), then
SIGTERM and SIGKILL to the server's process group. Each step is bounded in time, so a
hung mount can never wedge later tests. Nothing here ever stats a path under a mount it
is tearing down: mount state comes from ``/proc/self/mountinfo`` (proc(5)).

Use it from another test directory with ``from tests.tools.fuse_fixtures import faultfs``
in that directory's conftest (as ``tests/tools/conftest.py`` does), or everywhere with
``pytest_plugins = ["tests.tools.fuse_fixtures"]`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import fnmatch
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

FAULTFS_SCRIPT: Final = Path(__file__).with_name("faultfs.py")
FUSECTL_DIR: Final = Path("/sys/fs/fuse/connections")
MOUNT_TIMEOUT_S: Final = 10.0
CONTROL_TIMEOUT_S: Final = 5.0
# Teardown budgets: a lift answers in milliseconds unless the server is wedged, and a
# clean unmount takes well under a second; the margins are for loaded CI machines.
LIFT_TIMEOUT_S: Final = 1.0
FUSERMOUNT_TIMEOUT_S: Final = 3.0
# Calls just released by a lift may still hold the mount for a moment: "-u" is retried.
UNMOUNT_ATTEMPTS: Final = 4
UNMOUNT_RETRY_S: Final = 0.25
SERVER_EXIT_TIMEOUT_S: Final = 5.0
SIGNAL_WAIT_S: Final = 1.0
POLL_S: Final = 0.02

# Every mount point this process has mounted, for an end-of-session check.
STARTED_MOUNTPOINTS: list[Path] = []
_OPEN_HANDLES: list[FaultFS] = []
_ABANDONED: list[subprocess.Popen[bytes]] = []


class FaultFSError(RuntimeError):
    """The faultfs server could not be started, reached, or taken down."""


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo`` (proc(5)), the fields this module needs.

    Attributes:
        mount_id: Unique id of the mount.
        major: Major number of the superblock's device (0 for FUSE).
        minor: Minor number of the superblock's device.
        mountpoint: Mount point, with the octal escapes (``\\040``) decoded.
        fstype: File system type, e.g. ``fuse.faultfs``.
    """

    mount_id: int
    major: int
    minor: int
    mountpoint: str
    fstype: str

    @property
    def fuse_connection(self) -> int:
        """Return the FUSE connection number (the kernel's encoded ``st_dev``)."""
        return (self.major << 20) | self.minor


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as three-digit octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    """Parse a mountinfo file.

    Args:
        path: File to read; ``/proc/self/mountinfo`` by default.

    Returns:
        One entry per mount, in the kernel's order.

    Raises:
        OSError: If the file cannot be read.
    """
    entries = []
    with open(path, encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            fields = line.split()
            major, minor = fields[2].split(":")
            fstype = fields[fields.index("-", 6) + 1]
            entries.append(
                MountEntry(int(fields[0]), int(major), int(minor), _unescape(fields[4]), fstype)
            )
    return entries


def find_mount(mountpoint: str | Path) -> MountEntry | None:
    """Return the top-most mount at ``mountpoint`` (already a real path), or None.

    Never touches the path itself, so it cannot hang on a dead mount.
    """
    found = [m for m in read_mountinfo() if m.mountpoint == str(mountpoint)]
    return found[-1] if found else None


@dataclass(frozen=True)
class HeldCall:
    """A FUSE call the server is holding in a ``hang`` or ``delay``.

    Attributes:
        op: Operation name (``getattr``, ``read`` ...).
        path: Path inside the mount.
        kind: ``hang`` or the rule's kind when a delay precedes it.
        rule: Id of the rule holding the call.
        tid: Linux thread id of the caller (FUSE's ``fuse_context.pid``).
        pid: Process id of that thread, or None if it has gone.
        held_s: Seconds held so far.
    """

    op: str
    path: str
    kind: str
    rule: int
    tid: int
    pid: int | None
    held_s: float


def _run_bounded(argv: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Run a command with a time bound.

    A child blocked in an uninterruptible FUSE wait cannot be reaped even after SIGKILL,
    so on timeout it is killed and set aside (reaped by a later call) instead of waited for.

    Args:
        argv: Command and arguments.
        timeout_s: Upper bound on the run, in seconds.

    Returns:
        (exit status, or None on timeout; combined stdout and stderr, stripped).
    """
    _ABANDONED[:] = [child for child in _ABANDONED if child.poll() is None]
    child = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)
        if child.returncode is None:
            # Kept referenced so Popen.__del__ never warns about a running child.
            _ABANDONED.append(child)
        return None, "timed out"
    return child.returncode, out.decode(errors="replace").strip()


def abort_connection(connection: int) -> bool:
    """Abort a FUSE connection through the FUSE control filesystem.

    Every request pending on the connection ends with an error and later ones get
    ENOTCONN; the server's ``/dev/fuse`` reads fail, so it stops serving.
    Mounts ``fusectl`` on ``/sys/fs/fuse/connections`` first if it is not mounted
    (and leaves it mounted, as systemd does). See the kernel's
    Documentation/filesystems/fuse.rst, "Aborting a filesystem connection".

    Args:
        connection: Connection number (``MountEntry.fuse_connection``).

    Returns:
        True if the abort file was written, False if the connection was already gone.

    Raises:
        OSError: When fusectl cannot be mounted or the abort file not written.
    """
    if not any(m.fstype == "fusectl" for m in read_mountinfo()):
        status, out = _run_bounded(
            ["mount", "-t", "fusectl", "fusectl", str(FUSECTL_DIR)], FUSERMOUNT_TIMEOUT_S
        )
        if status != 0:
            raise OSError(f"cannot mount fusectl on {FUSECTL_DIR}: {out}")
    abort = FUSECTL_DIR / str(connection) / "abort"
    try:
        abort.write_text("1")
    except FileNotFoundError:
        return False
    return True


class FaultFS:
    """A running faultfs mount and its control channel.

    Create with :meth:`start`; always :meth:`close` (the fixture does).

    Attributes:
        source: Directory mirrored.
        mountpoint: Where it is mounted (a real path).
        connection: FUSE connection number, for an abort through fusectl.
        process: The server process.
        teardown_steps: What :meth:`close` did, in order, e.g. ``["lift", "unmount"]``.
        escalated_log: The server log, kept when :meth:`close` had to go past a clean
            lift and unmount ("" otherwise).
    """

    def __init__(
        self,
        *,
        source: Path,
        mountpoint: Path,
        workdir: Path,
        owns_mountpoint: bool,
        process: subprocess.Popen[bytes],
        connection: int,
    ) -> None:
        self.source = source
        self.mountpoint = mountpoint
        self.connection = connection
        self.process = process
        self.teardown_steps: list[str] = []
        self.escalated_log = ""
        self._workdir = workdir
        self._owns_mountpoint = owns_mountpoint
        self._closed = False

    @property
    def control_path(self) -> Path:
        """Unix socket of the server's control channel."""
        return self._workdir / "control.sock"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr (removed by :meth:`close`)."""
        return self._workdir / "server.log"

    @property
    def pid(self) -> int:
        """Process id of the server (also its process group id)."""
        return self.process.pid

    @classmethod
    def start(
        cls,
        source: str | Path,
        mountpoint: str | Path | None = None,
        *,
        max_threads: int = 64,
        max_hang_s: float = 600.0,
        allow_other: bool = False,
        debug: bool = False,
        mount_timeout_s: float = MOUNT_TIMEOUT_S,
    ) -> FaultFS:
        """Start a faultfs server and wait until its mount is up.

        Args:
            source: Directory to mirror.
            mountpoint: Empty directory to mount on; a fresh one under a new temporary
                directory when None.
            max_threads: libfuse worker threads, so this many calls can hang at once
                while others are still answered.
            max_hang_s: Upper bound, in seconds, on any one hang.
            allow_other: Let users other than the mounting one (root) in, e.g. a vend
                running as ``nobody``; the kernel then checks permissions from the
                mirrored modes (``default_permissions``), as an NFS server would.
            debug: Have libfuse trace every request into the server log.
            mount_timeout_s: How long to wait for the mount to appear, in seconds.

        Returns:
            The handle, mounted and answering on its control socket.

        Raises:
            FaultFSError: When the server exits or the mount does not appear in time
                (the message carries the server log), or something is already mounted
                on ``mountpoint``.
        """
        source = Path(source).resolve(strict=True)
        # Resolved now, before anything is mounted there: later lookups could hang.
        target = None if mountpoint is None else Path(mountpoint).resolve(strict=True)
        if target is not None and find_mount(target) is not None:
            raise FaultFSError(f"something is already mounted on {target}")
        # A short directory: Unix socket paths are limited to 107 bytes.
        workdir = Path(tempfile.mkdtemp(prefix="faultfs-", dir="/tmp"))
        if allow_other:
            workdir.chmod(0o755)  # so other users can reach the mount point inside
        owns_mountpoint = target is None
        if target is None:
            target = workdir / "mnt"
            target.mkdir()
        argv = [
            sys.executable,
            str(FAULTFS_SCRIPT),
            str(source),
            str(target),
            "--control",
            str(workdir / "control.sock"),
            "--max-threads",
            str(max_threads),
            "--max-hang",
            str(max_hang_s),
        ]
        argv += ["--allow-other"] * allow_other + ["--debug"] * debug
        with open(workdir / "server.log", "wb") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        STARTED_MOUNTPOINTS.append(target)
        deadline = time.monotonic() + mount_timeout_s
        entry = find_mount(target)
        while entry is None or entry.fstype != "fuse.faultfs":
            if process.poll() is not None or time.monotonic() > deadline:
                handle = cls(
                    source=source,
                    mountpoint=target,
                    workdir=workdir,
                    owns_mountpoint=owns_mountpoint,
                    process=process,
                    connection=-1,
                )
                log_text = handle.read_log()
                handle.close()
                raise FaultFSError(f"faultfs did not mount on {target}:\n{log_text}")
            time.sleep(POLL_S)
            entry = find_mount(target)
        handle = cls(
            source=source,
            mountpoint=target,
            workdir=workdir,
            owns_mountpoint=owns_mountpoint,
            process=process,
            connection=entry.fuse_connection,
        )
        _OPEN_HANDLES.append(handle)
        try:
            handle._request({"cmd": "ping"})
        except BaseException:
            handle.close()
            raise
        return handle

    def read_log(self) -> str:
        """Return the server log so far ("" if none)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _request(
        self, request: dict[str, Any], *, timeout_s: float = CONTROL_TIMEOUT_S
    ) -> dict[str, Any]:
        """Send one control command and return the reply.

        Raises:
            ValueError: When the server refuses the command's arguments.
            FaultFSError: When the control socket cannot be reached or answers nothing.
        """
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(timeout_s)
                conn.connect(str(self.control_path))
                conn.sendall(json.dumps(request).encode() + b"\n")
                with conn.makefile("rb") as replies:
                    line = replies.readline()
        except OSError as exc:
            raise FaultFSError(f"faultfs control {request.get('cmd')!r}: {exc}") from exc
        if not line:
            raise FaultFSError(f"faultfs control {request.get('cmd')!r}: no reply")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise ValueError(reply.get("error", "faultfs refused the command"))
        return reply

    def inject(
        self,
        op: str,
        path_glob: str,
        kind: str,
        seconds: float | None = None,
        *,
        count: int | None = None,
        min_offset: int | None = None,
    ) -> int:
        """Add a fault; it applies to calls that arrive from now on.

        Args:
            op: libfuse operation: ``getattr`` (also answers LOOKUP; ``lookup`` is an
                alias), ``access``, ``readlink``, ``open``, ``read``, ``flush``,
                ``release``, ``opendir``, ``readdir``, ``releasedir``, ``statfs``, or
                ``*`` for all.
            path_glob: ``fnmatch`` pattern over the path inside the mount, starting with
                ``/`` (``/`` itself is the root); ``*`` also matches ``/``.
            kind: ``hang`` (block until lifted), ``delay`` (answer after ``seconds``), or
                an errno name such as ``EIO``, ``ESTALE``, ``ENOTCONN``, ``ETIMEDOUT``.
            seconds: For ``delay``, the delay; for an errno kind, an optional wait
                before failing (a soft mount's timeout). Not allowed for ``hang``.
            count: Fire at most this many times, then let calls through; None for
                always. The kernel retries ESTALE itself (LOOKUP_REVAL): one ESTALE
                seen by ``stat()`` takes 2 ``getattr`` firings for a name not yet looked
                up and 3 for one already looked up; by ``open()``, 2 ``open`` firings;
                by ``read()``, 1. A smaller count is absorbed by the kernel.
            min_offset: For ``read``: only reads starting at or beyond this byte offset,
                to fail in the middle of a body.

        Returns:
            The rule's id, for :meth:`lift`.

        Raises:
            ValueError: On an unknown op or kind, or invalid numbers.
            FaultFSError: When the server cannot be reached.
        """
        request = {
            "cmd": "inject",
            "op": op,
            "path": path_glob,
            "kind": kind,
            "seconds": seconds,
            "count": count,
            "min_offset": min_offset,
        }
        rule_id: int = self._request(request)["id"]
        return rule_id

    def lift(self, rule_id: int | None = None) -> int:
        """Remove one fault, or all when ``rule_id`` is None.

        Calls held by a lifted hang or delay proceed at once, as if it had never been.

        Returns:
            The number of rules removed.

        Raises:
            FaultFSError: When the server cannot be reached.
        """
        lifted: int = self._request({"cmd": "lift", "id": rule_id})["lifted"]
        return lifted

    def faults(self) -> list[dict[str, Any]]:
        """Return the rules in force: id, op, path, kind, seconds, remaining, min_offset, fired."""
        faults: list[dict[str, Any]] = self._request({"cmd": "faults"})["faults"]
        return faults

    def hung(self) -> list[HeldCall]:
        """Return the calls now held by a hang or a delay, oldest first."""
        return [HeldCall(**held) for held in self._request({"cmd": "hung"})["hung"]]

    def wait_hung(
        self,
        count: int = 1,
        *,
        timeout_s: float = 5.0,
        op: str | None = None,
        path_glob: str | None = None,
    ) -> list[HeldCall]:
        """Wait until at least ``count`` matching calls are held.

        Args:
            count: How many held calls to wait for.
            timeout_s: Upper bound on the wait, in seconds.
            op: Only count calls of this operation.
            path_glob: Only count calls whose path matches this ``fnmatch`` pattern.

        Returns:
            The matching held calls.

        Raises:
            TimeoutError: When fewer than ``count`` are held after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            held = [
                h
                for h in self.hung()
                if (op is None or h.op == op)
                and (path_glob is None or fnmatch.fnmatchcase(h.path, path_glob))
            ]
            if len(held) >= count:
                return held
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(held)} of {count} calls held after {timeout_s} s")
            time.sleep(POLL_S)

    def calls(self, *, reset: bool = False) -> dict[tuple[str, str], int]:
        """Return how many times each (op, path) reached the server, optionally zeroing.

        Counts include faulted calls; they show what the kernel really sent.
        """
        reply = self._request({"cmd": "reset_calls" if reset else "calls"})
        return {(op, path): n for op, path, n in reply["calls"]}

    def is_mounted(self) -> bool:
        """Tell whether the mount is still in this process's mount table."""
        entry = find_mount(self.mountpoint)
        return entry is not None and entry.fstype == "fuse.faultfs"

    def close(self) -> list[str]:
        """Lift faults, unmount, and stop the server; safe to call more than once.

        While the server answers its control socket: lift, ``fusermount3 -u``, then
        ``fusermount3 -uz``; only if the server has not exited after that, the last
        resort: abort the connection through fusectl, then SIGTERM and SIGKILL to the
        server's process group. When the server does not answer (stopped, deadlocked),
        the last resort comes first: unmounting a wedged FUSE mount can itself block
        for good in the kernel (fusermount3 inherits this process's descriptors, and
        closing one on the mount sends a FLUSH that cannot be interrupted), whereas
        after an abort every call fails at once and the unmount is immediate. Each
        step is bounded; the whole takes at most about 25 s, typically 0.1 s.

        Returns:
            The steps taken (also in ``teardown_steps``), e.g. ``["lift", "unmount"]``.

        Raises:
            FaultFSError: If the mount is still present at the end.
        """
        if self._closed:
            return self.teardown_steps
        self._closed = True
        steps = self.teardown_steps
        answering = False
        if self.process.poll() is None:
            try:
                self._request({"cmd": "lift"}, timeout_s=LIFT_TIMEOUT_S)
                steps.append("lift")
                answering = True
            except (FaultFSError, ValueError) as exc:
                steps.append(f"lift failed: {exc}")
        if answering:
            self._wait_drained(LIFT_TIMEOUT_S)
            self._unmount(steps, attempts=UNMOUNT_ATTEMPTS)
            if not self._wait_exit(SERVER_EXIT_TIMEOUT_S):
                self._abort_and_kill(steps)
        elif self.process.poll() is None:
            self._abort_and_kill(steps)
        # A dead or aborted connection answers ENOTCONN at once: unmounting cannot hang.
        self._unmount(steps, attempts=1)
        if steps != ["lift", "unmount"]:
            self.escalated_log = self.read_log()
        if self in _OPEN_HANDLES:
            _OPEN_HANDLES.remove(self)
        if self.is_mounted():
            raise FaultFSError(f"{self.mountpoint} still mounted after {steps}")
        self._remove_workdir()
        return steps

    def _wait_drained(self, timeout_s: float) -> None:
        """Give calls released by a lift a moment to finish, so ``-u`` finds the mount idle."""
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(FaultFSError, ValueError):
            while self.hung() and time.monotonic() < deadline:
                time.sleep(POLL_S)

    def _unmount(self, steps: list[str], *, attempts: int) -> None:
        """``fusermount3 -u`` (up to ``attempts`` times while busy), then ``-uz``."""
        for flags, name, tries in (("-u", "unmount", attempts), ("-uz", "lazy unmount", 1)):
            for attempt in range(tries):
                if not self.is_mounted():
                    return
                if attempt:
                    time.sleep(UNMOUNT_RETRY_S)
                status, out = _run_bounded(
                    ["fusermount3", flags, str(self.mountpoint)], FUSERMOUNT_TIMEOUT_S
                )
                if status == 0:
                    steps.append(name)
                    return
                if not self.is_mounted():  # the auto_unmount helper got there first
                    return
                if "busy" not in out:
                    break
            steps.append(f"{name} failed: {out}")

    def _abort_and_kill(self, steps: list[str]) -> None:
        if self.connection >= 0:
            try:
                steps.append("abort" if abort_connection(self.connection) else "abort: gone")
            except OSError as exc:
                steps.append(f"abort failed: {exc}")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self._wait_exit(SIGNAL_WAIT_S):
                return
            # The group is the server and its auto_unmount helper (start_new_session).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            steps.append(sig.name)
        self._wait_exit(SIGNAL_WAIT_S)

    def _wait_exit(self, timeout_s: float) -> bool:
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _remove_workdir(self) -> None:
        for name in ("control.sock", "server.log"):
            with contextlib.suppress(FileNotFoundError):
                (self._workdir / name).unlink()
        with contextlib.suppress(OSError):
            if self._owns_mountpoint:
                (self._workdir / "mnt").rmdir()
            self._workdir.rmdir()

    def __enter__(self) -> FaultFS:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@atexit.register
def _close_forgotten_handles() -> None:
    for handle in list(_OPEN_HANDLES):
        with contextlib.suppress(Exception):
            handle.close()


@pytest.fixture
def faultfs() -> Iterator[Callable[..., FaultFS]]:
    """Factory fixture: ``faultfs(source, mountpoint=None, **options) -> FaultFS``.

    Arguments are those of :meth:`FaultFS.start`. Every handle it made is closed at
    teardown, in reverse order, whatever the test's outcome; the first close error is
    raised after all have been tried.
    """
    handles: list[FaultFS] = []

    def start(source: str | Path, mountpoint: str | Path | None = None, **options: Any) -> FaultFS:
        handle = FaultFS.start(source, mountpoint, **options)
        handles.append(handle)
        return handle

    try:
        yield start
    finally:
        errors: list[BaseException] = []
        for handle in reversed(handles):
            try:
                steps = handle.close()
                if handle.escalated_log:
                    print(f"faultfs teardown of {handle.mountpoint} escalated: {steps}")
                    print(handle.escalated_log[-4000:])
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def leftover_mounts() -> list[MountEntry]:
    """Return the faultfs mounts this process started that are still mounted."""
    started = {str(p) for p in STARTED_MOUNTPOINTS}
    return [m for m in read_mountinfo() if m.fstype == "fuse.faultfs" and m.mountpoint in started]
