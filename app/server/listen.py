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


class ListenError(Exception):
    """vend cannot listen where the settings say; the message is one line naming the
    address (``127.0.0.1:8000``, ``unix:/run/vend/vend.sock``) and the reason."""


def bind_tcp(host: str, port: int) -> socket.socket:
    """Create and bind a TCP socket on ``host:port``, as uvicorn's ``bind_socket`` does.

    Args:
        host: an IPv4 or IPv6 address, or a host name resolving to one.
        port: the TCP port.

    Returns:
        The bound socket (``SO_REUSEADDR``, inheritable; not yet listening).

    Raises:
        ListenError: the host does not resolve, the address is in use, or binding is
            not permitted (bind(2), getaddrinfo(3)).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    try:
        info = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ListenError(
            f"cannot listen on {where}: {host} does not resolve ({exc.strerror})"
        ) from None
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[0][4])
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {where}: {_reason(exc)}") from None
    sock.set_inheritable(True)
    return sock


def bind_unix(path: Path) -> socket.socket:
    """``bind_unix_socket``, with its failures as one ``ListenError`` line.

    Args:
        path: absolute path of the socket file.

    Returns:
        The listening socket.

    Raises:
        ListenError: naming ``unix:PATH`` and why it cannot be used.
    """
    try:
        return bind_unix_socket(path)
    except SocketPathError as exc:
        raise ListenError(f"cannot listen on unix:{path}: {exc.strerror}") from None
    except OSError as exc:
        raise ListenError(f"cannot listen on unix:{path}: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    """An OSError's reason in lower case (``address already in use``)."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]
