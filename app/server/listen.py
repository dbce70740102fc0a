"""vend's Unix-domain listening socket (the ``unix_socket`` setting).

Apache on the same host reaches vend over a Unix socket more cheaply than over loopback
TCP (no TCP/IP stack on either side). ``bind_unix_socket`` makes the socket; uvicorn then
serves on it (``Server.run(sockets=...)``, or its supervisor for several workers):

- the file is created with mode 0660, so vend's user and group may connect and nobody
  else (give the group to Apache: apache/README.md);
- a socket file left behind by a vend that died is replaced; a path where something
  answers, or that is not a socket, is refused (``vend serve`` exits 3);
- the file stays when vend stops (uvicorn ends the process with the signal that stopped
  it); Apache then gets "connection refused" and answers 503 until the next start
  replaces the file.

Source: unix(7), bind(2).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path
from typing import Final

SOCKET_MODE: Final = 0o660
BACKLOG: Final = 2048
"""Pending connections the kernel queues (clamped to net.core.somaxconn), as uvicorn's."""


class SocketPathError(OSError):
    """The socket path is in use by a live server, or is not a socket."""


def _clear_stale(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse anything else at ``path``."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketPathError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale: left by a vend that did not stop cleanly
        return
    except OSError as exc:
        raise SocketPathError(exc.errno or errno.EIO, f"{path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise SocketPathError(errno.EADDRINUSE, f"{path} is in use by a running server")


def bind_unix_socket(path: Path) -> socket.socket:
    """Create, bind and listen on a Unix-domain stream socket with mode 0660.

    Args:
        path: absolute path of the socket file; its directory must exist.

    Returns:
        The listening socket (blocking; uvicorn sets it non-blocking).

    Raises:
        SocketPathError: another server listens on ``path``, or ``path`` is not a socket.
        OSError: the directory is missing or not writable (bind(2)).
    """
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The file is born with mode 0660 (bind(2) applies the umask), never wider.
    old_umask = os.umask(0o777 & ~SOCKET_MODE)
    try:
        sock.bind(os.fspath(path))
        os.chmod(path, SOCKET_MODE)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    return sock
