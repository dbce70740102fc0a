"""faultfs: a read-only FUSE passthrough filesystem that injects faults on command.

A test tool, not part of vend. It mirrors SOURCE at MOUNTPOINT through libfuse 3 (via the
``mfusepy`` bindings) with the kernel's caches turned off (``direct_io``, ``attr_timeout=0``,
``entry_timeout=0``, ``negative_timeout=0``), so every ``stat``, ``open`` and ``read`` a
client makes reaches this process, where a fault can stand in for a dead, slow or broken
NFS server:

    hang            block the call until the fault is lifted (a hard mount whose server
                    died); like an NFS hard mount, a caller being killed is let go
    delay           sleep ``seconds``, then answer normally (a slow server)
    EIO, ESTALE,    fail with that errno, optionally after ``seconds`` (a soft mount's
    ENOTCONN, ...   timeout, a replaced file, a dead FUSE transport); any name in ``errno``

Faults are set AT RUN TIME over a Unix stream socket (``--control PATH``): one JSON object
per line in, one JSON object per line out. Commands::

    {"cmd": "ping"}                                  -> {"ok": true, "pid": 123}
    {"cmd": "inject", "op": "read", "path": "/a/*", "kind": "EIO",
     "seconds": null, "count": null, "min_offset": null}
                                                     -> {"ok": true, "id": 1}
    {"cmd": "lift"}            (all) or {"cmd": "lift", "id": 1}
                                                     -> {"ok": true, "lifted": 1}
    {"cmd": "faults"}                                -> {"ok": true, "faults": [...]}
    {"cmd": "hung"}                                  -> {"ok": true, "hung": [...]}
    {"cmd": "calls"} / {"cmd": "reset_calls"}        -> {"ok": true, "calls": [[op, path, n]]}
    errors                                           -> {"ok": false, "error": "..."}

Matching: ``op`` is a libfuse high-level operation name (see ``OPERATIONS``) or ``*``;
``lookup`` is accepted as a synonym of ``getattr`` because libfuse's high-level API answers
the kernel's LOOKUP by calling ``getattr``. ``path`` is an ``fnmatch`` glob over the path
inside the mount (``/dir/file``); ``*`` also matches ``/``. The first matching rule, in
the order injected, applies. ``count`` limits how often a rule fires; ``min_offset``
(bytes) restricts a ``read`` rule to reads starting at or beyond that offset, for
failures in the middle of a body. Lifting a rule releases the calls it holds: hung and
delayed calls then proceed as if the rule had never existed.

What the kernel adds (measured on Linux 6.18 with libfuse 3.14, Debian 12's):

- A path walk or ``open`` that gets ESTALE is retried once by the VFS with LOOKUP_REVAL.
  Before user space sees one ESTALE, a ``stat()`` consumes two ``getattr`` firings for
  a name not yet in the dentry cache and three for one already there (revalidation,
  lookup, retry); an ``open()`` consumes two ``open`` firings; ``read`` is not retried.
  A smaller ``count`` is absorbed by the kernel and never seen; the ``calls`` command
  shows what really arrived.
- libfuse before 3.16 never grants FUSE_PARALLEL_DIROPS, so the kernel serialises the
  first LOOKUP of names within one directory: while one hangs, other names of that
  directory not yet in the dentry cache wait behind it. Names already looked up are
  revalidated without that lock, as on NFS; look them up once before injecting a hang.
- ``flush`` is sent on every ``close()``, also by a forked child closing inherited
  descriptors before ``exec``; a hang on ``flush`` (or ``*``) therefore also blocks
  process creation in a process holding a descriptor on the mount.
- Linux FUSE never abandons a request this process has read, even for SIGKILL; NFS hard
  mounts wait killably. Held calls therefore watch their caller (proc(5) ``SigPnd``) and
  answer EINTR as soon as it is being killed or its process exits, so a killed process
  can die while its mount hangs, as on NFS. Other signals do not end a hang.
- After an abort through fusectl, calls held by the server fail with ECONNABORTED and
  every later call with ENOTCONN.
- With ``--allow-other`` the kernel checks permissions itself (``default_permissions``),
  so ``access`` never reaches this process; faults on ``getattr`` still apply.

Run (foreground, until unmounted)::

    python tests/tools/faultfs.py SOURCE MOUNTPOINT --control /tmp/ffs.sock

The process exits when the file system is unmounted (``fusermount3 -u MOUNTPOINT``). If its
parent process dies it exits at once; ``auto_unmount`` then has fusermount3 detach the mount.
Follows libfuse 3.14's high-level API (``fuse.h``) and the Linux FUSE protocol
(Documentation/filesystems/fuse.rst).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fnmatch
import itertools
import json
import logging
import os
import socketserver
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

# mfusepy picks libfuse 2 when both are installed; this tool speaks the fuse3 option set.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # after the library choice above

log = logging.getLogger("faultfs")

OPERATIONS: Final = frozenset(
    {
        "getattr",
        "access",
        "readlink",
        "open",
        "read",
        "flush",
        "release",
        "opendir",
        "readdir",
        "releasedir",
        "statfs",
    }
)
OP_ALIASES: Final = {"lookup": "getattr"}
KINDS_WITHOUT_ERRNO: Final = frozenset({"hang", "delay"})
# Every hang ends by itself after this long, should nothing ever lift it.
DEFAULT_MAX_HANG_S: Final = 600.0
MAX_CONTROL_LINE_BYTES: Final = 65536
MAX_CALL_KEYS: Final = 100_000
PARENT_POLL_S: Final = 0.5
FUSE_CAP_PARALLEL_DIROPS: Final = 1 << 18  # fuse_common.h
SIGKILL_BIT: Final = 1 << (9 - 1)  # signal n is bit n-1 of proc(5)'s pending masks
KILL_POLL_S: Final = 0.1
# Times go separately, in nanoseconds (the operations class sets use_ns).
STAT_FIELDS: Final = (
    "st_mode",
    "st_ino",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_blocks",
    "st_blksize",
    "st_rdev",
)
STATVFS_FIELDS: Final = (
    "f_bsize",
    "f_frsize",
    "f_blocks",
    "f_bfree",
    "f_bavail",
    "f_files",
    "f_ffree",
    "f_favail",
    "f_flag",
    "f_namemax",
)


@dataclass
class Rule:
    """One injected fault.

    Attributes:
        id: Number the control socket hands out, unique per process.
        op: Operation name from ``OPERATIONS``, or ``*``.
        path_glob: ``fnmatch`` pattern over the path inside the mount.
        kind: ``hang``, ``delay``, or an errno name such as ``EIO``.
        seconds: Delay before answering (``delay``) or before failing (errno kinds).
        remaining: Fires left, or None for unlimited.
        min_offset: For ``read``: only reads at or beyond this byte offset match.
        fired: How many calls this rule has hit.
        released: Set when the rule is lifted; hung and delayed calls wait on it.
    """

    id: int
    op: str
    path_glob: str
    kind: str
    seconds: float | None
    remaining: int | None
    min_offset: int | None
    fired: int = 0
    released: threading.Event = field(default_factory=threading.Event)

    def matches(self, op: str, path: str, offset: int | None) -> bool:
        """Tell whether this rule applies to one call.

        Args:
            op: Operation name of the call.
            path: Path inside the mount.
            offset: Byte offset of a ``read``, else None.

        Returns:
            True when the rule is live and matches op, path and offset.
        """
        if self.released.is_set() or self.remaining == 0:
            return False
        if self.op not in ("*", op) or not fnmatch.fnmatchcase(path, self.path_glob):
            return False
        return self.min_offset is None or (offset is not None and offset >= self.min_offset)

    def describe(self) -> dict[str, Any]:
        """Return the rule as a JSON-ready dict (without the event)."""
        return {
            "id": self.id,
            "op": self.op,
            "path": self.path_glob,
            "kind": self.kind,
            "seconds": self.seconds,
            "remaining": self.remaining,
            "min_offset": self.min_offset,
            "fired": self.fired,
        }


def parse_rule(rule_id: int, request: dict[str, Any]) -> Rule:
    """Validate an ``inject`` request and build its rule.

    Args:
        rule_id: Id to give the rule.
        request: The decoded control request.

    Returns:
        The new rule (not yet active).

    Raises:
        ValueError: On an unknown op or kind, a missing or negative ``seconds``, a
            non-positive ``count`` or a negative ``min_offset``.
    """
    op = OP_ALIASES.get(str(request.get("op")), str(request.get("op")))
    if op != "*" and op not in OPERATIONS:
        raise ValueError(f"unknown op {op!r}; expected one of {sorted(OPERATIONS)} or '*'")
    kind = str(request.get("kind"))
    kind = kind.lower() if kind.lower() in KINDS_WITHOUT_ERRNO else kind.upper()
    if kind not in KINDS_WITHOUT_ERRNO and not isinstance(getattr(errno, kind, None), int):
        raise ValueError(f"unknown kind {kind!r}; expected hang, delay or an errno name")
    seconds = request.get("seconds")
    if seconds is not None:
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
    if kind == "delay" and seconds is None:
        raise ValueError("a delay needs seconds")
    if kind == "hang" and seconds is not None:
        raise ValueError("a hang lasts until lifted; it takes no seconds")
    count = request.get("count")
    if count is not None and int(count) < 1:
        raise ValueError("count must be >= 1")
    min_offset = request.get("min_offset")
    if min_offset is not None and int(min_offset) < 0:
        raise ValueError("min_offset must be >= 0")
    return Rule(
        id=rule_id,
        op=op,
        path_glob=str(request.get("path", "*")),
        kind=kind,
        seconds=seconds,
        remaining=None if count is None else int(count),
        min_offset=None if min_offset is None else int(min_offset),
    )


def read_tgid(tid: int) -> int | None:
    """Return the process (thread group) id of a thread, or None if it is gone.

    Args:
        tid: A Linux thread id, as FUSE reports the caller (``fuse_context.pid``).
    """
    try:
        with open(f"/proc/{tid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def is_dying(tid: int) -> bool:
    """Tell whether a thread has SIGKILL pending (killed, or its process is exiting).

    Args:
        tid: Linux thread id of a FUSE caller.

    Returns:
        True if SIGKILL is in the thread's or its process's pending set (proc(5)
        ``SigPnd``/``ShdPnd``), or the thread is gone.
    """
    try:
        with open(f"/proc/{tid}/status", encoding="ascii", errors="replace") as status:
            pending = [
                int(line.split()[1], 16)
                for line in status
                if line.startswith(("SigPnd:", "ShdPnd:"))
            ]
    except (OSError, ValueError):
        return True
    return any(mask & SIGKILL_BIT for mask in pending)


def wait_killable(released: threading.Event, tid: int, seconds: float) -> str:
    """Wait for a rule's lift the way a hard NFS mount waits for its server: killably.

    Linux FUSE cannot abandon a request the server has already read, not even for
    SIGKILL, so a killed caller would stay in D state until answered. An NFS hard mount
    waits TASK_KILLABLE instead, and this emulates it: a caller being killed (or whose
    process is exiting) is answered at once.

    Args:
        released: Set when the rule is lifted.
        tid: Linux thread id of the caller.
        seconds: Upper bound on the wait.

    Returns:
        ``"lifted"``, ``"killed"`` or ``"timeout"``.
    """
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        if released.wait(min(KILL_POLL_S, left)):
            return "lifted"
        if is_dying(tid):
            return "killed"


class FaultTable:
    """The live rules, the calls they hold, and per-(op, path) call counts; thread-safe.

    Args:
        max_hang_s: Upper bound, in seconds, on any one hang.
    """

    def __init__(self, *, max_hang_s: float) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._rules: list[Rule] = []
        self._held: dict[int, dict[str, Any]] = {}
        self._calls: Counter[tuple[str, str]] = Counter()
        self._max_hang_s = max_hang_s

    def inject(self, request: dict[str, Any]) -> int:
        """Add a rule from a control request and return its id (see ``parse_rule``)."""
        with self._lock:
            rule = parse_rule(next(self._ids), request)
            self._rules.append(rule)
        log.info("inject %s", rule.describe())
        return rule.id

    def lift(self, rule_id: int | None = None) -> int:
        """Remove one rule (by id) or all, releasing the calls they hold.

        Returns:
            How many rules were removed.
        """
        with self._lock:
            lifted = [r for r in self._rules if rule_id is None or r.id == rule_id]
            self._rules = [r for r in self._rules if r not in lifted]
        for rule in lifted:
            rule.released.set()
        log.info("lift %s", [r.id for r in lifted])
        return len(lifted)

    def faults(self) -> list[dict[str, Any]]:
        """Return every rule not lifted, including rules whose count ran out."""
        with self._lock:
            return [r.describe() for r in self._rules]

    def hung(self) -> list[dict[str, Any]]:
        """Return the calls now held by a hang or delay, oldest first.

        Each entry has ``op``, ``path``, ``kind``, ``rule``, ``tid`` (the caller's thread),
        ``pid`` (its process, None if gone) and ``held_s`` (seconds held so far).
        """
        now = time.monotonic()
        with self._lock:
            held = sorted(self._held.values(), key=lambda h: h["since"])
        return [
            {k: v for k, v in h.items() if k != "since"}
            | {"held_s": now - h["since"], "pid": read_tgid(h["tid"])}
            for h in held
        ]

    def calls(self, *, reset: bool = False) -> list[list[Any]]:
        """Return ``[op, path, count]`` for every call seen, optionally zeroing the counts."""
        with self._lock:
            out = [[op, path, n] for (op, path), n in sorted(self._calls.items())]
            if reset:
                self._calls.clear()
        return out

    @contextlib.contextmanager
    def _holding(self, rule: Rule, op: str, path: str) -> Iterator[int]:
        """Record the current call as held while the block runs; yields the caller's tid."""
        key = threading.get_ident()
        _, _, tid = mfusepy.fuse_get_context()
        entry = {"op": op, "path": path, "kind": rule.kind, "rule": rule.id, "tid": tid}
        with self._lock:
            self._held[key] = entry | {"since": time.monotonic()}
        try:
            yield tid
        finally:
            with self._lock:
                self._held.pop(key, None)

    def apply(self, op: str, path: str, offset: int | None = None) -> None:
        """Count one call and act on the first rule that matches it.

        Args:
            op: Operation name.
            path: Path inside the mount.
            offset: Byte offset for ``read``, else None.

        Raises:
            OSError: With the rule's errno, for errno kinds not lifted while waiting.
        """
        with self._lock:
            if len(self._calls) < MAX_CALL_KEYS or (op, path) in self._calls:
                self._calls[(op, path)] += 1
            rule = next((r for r in self._rules if r.matches(op, path, offset)), None)
            if rule is None:
                return
            rule.fired += 1
            if rule.remaining is not None:
                rule.remaining -= 1
        if rule.kind == "hang":
            with self._holding(rule, op, path) as tid:
                outcome = wait_killable(rule.released, tid, self._max_hang_s)
            if outcome == "timeout":
                log.warning("hang on %s %s ended by the %.0f s bound", op, path, self._max_hang_s)
            if outcome == "killed":
                raise OSError(errno.EINTR, os.strerror(errno.EINTR))
            return
        if rule.seconds:
            with self._holding(rule, op, path) as tid:
                outcome = wait_killable(rule.released, tid, rule.seconds)
            if outcome == "killed":
                raise OSError(errno.EINTR, os.strerror(errno.EINTR))
            if outcome == "lifted":
                return
        if rule.kind != "delay":
            code = getattr(errno, rule.kind)
            raise OSError(code, os.strerror(code))

    def release_all(self) -> None:
        """Lift every rule; used when the process is about to go away."""
        self.lift(None)


F = TypeVar("F", bound=Callable[..., Any])


def faultable(op: str) -> Callable[[F], F]:
    """Decorate a passthrough operation so the fault table sees each call first.

    Args:
        op: Operation name the rules match on.
    """

    def wrap(method: F) -> F:
        def run(self: Passthrough, path: str, *args: Any) -> Any:
            offset = args[1] if op == "read" else None
            self.table.apply(op, path or "", offset)
            return method(self, path, *args)

        run.__name__ = method.__name__
        run.__doc__ = method.__doc__
        return run  # type: ignore[return-value]

    return wrap


class Passthrough(mfusepy.Operations):  # type: ignore[misc]
    """Read-only mirror of a source directory; every operation passes the fault table first.

    Args:
        source: Directory to mirror.
        table: Fault table consulted before each operation.
    """

    use_ns = True

    def __init__(self, source: str, table: FaultTable) -> None:
        self.source = os.path.realpath(source)
        self.table = table

    def init_with_config(self, conn: Any, config: Any) -> None:
        """Ask for parallel lookups and readdirs in one directory, as NFS allows.

        Without ``FUSE_CAP_PARALLEL_DIROPS`` the kernel serialises them per directory
        (``fuse_lock_inode``), so one hung lookup would block its siblings. libfuse
        before 3.16 drops the request (see the module docstring); later ones honour it.

        Args:
            conn: libfuse's ``fuse_conn_info`` (capabilities offered and wanted).
            config: libfuse's ``fuse_config``; left as the mount options set it.
        """
        if conn is not None and conn.capable & FUSE_CAP_PARALLEL_DIROPS:
            conn.want |= FUSE_CAP_PARALLEL_DIROPS

    def _real(self, path: str) -> str:
        return os.path.join(self.source, path.lstrip("/"))

    @faultable("getattr")
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        """Return ``lstat`` (or ``fstat`` of an open handle) of the source file."""
        st = os.fstat(fh) if fh is not None else os.lstat(self._real(path))
        attrs = {key: getattr(st, key) for key in STAT_FIELDS}
        attrs |= {"st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns}
        attrs["st_ctime"] = st.st_ctime_ns
        return attrs

    @faultable("access")
    def access(self, path: str, amode: int) -> int:
        """Answer ``access(2)`` with the source file's permissions."""
        if not os.access(self._real(path), amode):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return 0

    @faultable("readlink")
    def readlink(self, path: str) -> str:
        """Return the source symlink's target, unchanged."""
        return os.readlink(self._real(path))

    @faultable("open")
    def open(self, path: str, flags: int) -> int:
        """Open the source file read-only and return its descriptor; writes get EROFS."""
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return os.open(self._real(path), os.O_RDONLY | os.O_CLOEXEC)

    @faultable("read")
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        """Return up to ``size`` bytes at byte ``offset`` of the open source file."""
        return os.pread(fh, size, offset)

    @faultable("flush")
    def flush(self, path: str, fh: int) -> int:
        """Nothing to flush on a read-only file."""
        return 0

    @faultable("release")
    def release(self, path: str, fh: int) -> int:
        """Close the source file's descriptor."""
        os.close(fh)
        return 0

    @faultable("opendir")
    def opendir(self, path: str) -> int:
        """Check the source directory can be listed; no handle is kept."""
        if not os.access(self._real(path), os.R_OK | os.X_OK):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        if not os.path.isdir(self._real(path)):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        return 0

    @faultable("readdir")
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        """Return ``.``, ``..`` and the source directory's entries with their inode numbers.

        With ``use_ino`` the kernel passes ``st_ino`` on to ``getdents``, and glibc's
        ``readdir`` skips entries whose inode number is 0, so each entry carries its own.
        """
        real = self._real(path)
        entries = [(".", os.lstat(real)), ("..", os.lstat(os.path.join(real, "..")))]
        with os.scandir(real) as listing:
            entries += [(e.name, e.stat(follow_symlinks=False)) for e in listing]
        return [(name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0) for name, st in entries]

    @faultable("releasedir")
    def releasedir(self, path: str, fh: int) -> int:
        """Nothing to release: ``opendir`` keeps no handle."""
        return 0

    @faultable("statfs")
    def statfs(self, path: str) -> dict[str, int]:
        """Return ``statvfs`` of the source directory."""
        sv = os.statvfs(self._real(path))
        return {key: getattr(sv, key) for key in STATVFS_FIELDS}


class ControlHandler(socketserver.StreamRequestHandler):
    """Answer one JSON command per line on a control connection."""

    server: ControlServer

    def handle(self) -> None:
        """Read commands until the client closes; never touches the mount."""
        for _ in range(10_000):
            line = self.rfile.readline(MAX_CONTROL_LINE_BYTES)
            if not line:
                return
            try:
                reply = self.server.dispatch(json.loads(line))
            except (ValueError, TypeError, KeyError) as exc:
                reply = {"ok": False, "error": str(exc)}
            self.wfile.write(json.dumps(reply).encode() + b"\n")
            self.wfile.flush()


class ControlServer(socketserver.ThreadingUnixStreamServer):
    """The control socket: a thread per connection, so a hung FUSE call never blocks it.

    Args:
        path: Filesystem path of the Unix socket to create.
        table: Fault table the commands act on.
    """

    daemon_threads = True

    def __init__(self, path: str, table: FaultTable) -> None:
        self.table = table
        super().__init__(path, ControlHandler)

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one command.

        Args:
            request: Decoded JSON object with ``cmd`` and its arguments.

        Returns:
            The reply object.

        Raises:
            ValueError: On an unknown command or invalid arguments.
        """
        cmd = request.get("cmd")
        if cmd == "ping":
            return {"ok": True, "pid": os.getpid()}
        if cmd == "inject":
            return {"ok": True, "id": self.table.inject(request)}
        if cmd == "lift":
            rule_id = request.get("id")
            return {
                "ok": True,
                "lifted": self.table.lift(None if rule_id is None else int(rule_id)),
            }
        if cmd == "faults":
            return {"ok": True, "faults": self.table.faults()}
        if cmd == "hung":
            return {"ok": True, "hung": self.table.hung()}
        if cmd in ("calls", "reset_calls"):
            return {"ok": True, "calls": self.table.calls(reset=cmd == "reset_calls")}
        raise ValueError(f"unknown cmd {cmd!r}")


def watch_parent(table: FaultTable) -> None:
    """Exit the process when its parent dies, so an abandoned mount never hangs anyone.

    Releasing the faults first lets held calls answer; ``os._exit`` then closes
    ``/dev/fuse``, which aborts the connection, and ``auto_unmount`` detaches the mount.
    """
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    log.warning("parent %d died; exiting", parent)
    table.release_all()
    time.sleep(PARENT_POLL_S)
    os._exit(3)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("source", help="directory to mirror")
    parser.add_argument("mountpoint", help="empty directory to mount on")
    parser.add_argument("--control", required=True, help="Unix socket path to create")
    parser.add_argument("--max-threads", type=int, default=64, help="libfuse worker threads")
    parser.add_argument("--max-hang", type=float, default=DEFAULT_MAX_HANG_S, help="seconds")
    parser.add_argument(
        "--allow-other", action="store_true", help="let other users in (permissions enforced)"
    )
    parser.add_argument("--debug", action="store_true", help="libfuse request trace")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Mount, serve until unmounted, and return the exit status.

    Args:
        argv: Command-line arguments without the program name; ``sys.argv[1:]`` if None.

    Returns:
        0 after a clean unmount.

    Raises:
        RuntimeError: When libfuse fails to mount or serve.
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s faultfs[%(process)d] %(levelname)s %(message)s",
    )
    if not os.path.isdir(args.source):
        raise SystemExit(f"faultfs: source {args.source!r} is not a directory")
    table = FaultTable(max_hang_s=args.max_hang)
    control = ControlServer(args.control, table)
    threading.Thread(
        target=control.serve_forever, args=(0.05,), name="control", daemon=True
    ).start()
    threading.Thread(target=watch_parent, args=(table,), name="parent", daemon=True).start()
    options: dict[str, Any] = {
        "foreground": True,
        "debug": args.debug,
        "fsname": "faultfs",
        "subtype": "faultfs",
        # No kernel caching: each syscall must reach the rules above.
        "direct_io": True,
        "attr_timeout": 0,
        "entry_timeout": 0,
        "negative_timeout": 0,
        "use_ino": True,
        "auto_unmount": True,
        "max_threads": args.max_threads,
    }
    if args.allow_other:
        # Other users: the kernel checks the mirrored modes, as an NFS server would; this
        # process runs as root and would otherwise let anyone read anything.
        options["allow_other"] = True
        options["default_permissions"] = True
    try:
        mfusepy.FUSE(Passthrough(args.source, table), args.mountpoint, **options)
    finally:
        table.release_all()
        control.shutdown()
        control.server_close()
        with contextlib.suppress(OSError):
            os.unlink(args.control)
    return 0


if __name__ == "__main__":
    status = main()
    logging.shutdown()
    # Unmounted: nothing left to tidy, and interpreter teardown is slow on a loaded machine.
    os._exit(status)
