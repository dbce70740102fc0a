"""The connection's limits, reason phrases and state machine (RFC 9112).

vend must be safe when reached directly, not only behind Apache. The limits below are
what Apache (``LimitRequest*``, mod_reqtimeout) and nginx apply:

- A request-target over ``MAX_REQUEST_TARGET_BYTES`` gets 414; a head over
  ``MAX_HEAD_BYTES``, a field over ``MAX_FIELD_BYTES`` or more than ``MAX_FIELDS``
  fields gets 431. Head bytes are counted before they reach the parser (httptools joins
  a field's pieces by copying), so nothing past the limit is ever parsed.
- At most ``MAX_PIPELINED_REQUESTS`` parsed requests wait behind the one being answered;
  the bytes after them are held unparsed (at most one read) and reading stops until a
  response completes.
- A request (head and any body) must arrive within ``request_head_s`` seconds of its first
  byte, and a new connection must send its first byte within that time; the clock runs
  only while vend reads. Otherwise: 408 if part of a request had arrived, else a silent
  close.
- A request body (vend serves no method that takes one) is read and discarded up to
  ``MAX_DISCARDED_BODY_BYTES``; a longer one gets 413 and the connection closes.

A refusal goes out after the answers to every earlier request, with ``Connection:
close``; vend then closes its side for writing and reads and discards for at most
``LINGER_S`` seconds (a lingering close), so that the client reads the refusal rather
than a reset.

The connection's reading side is an explicit state machine (``ReadState``, ``Event`` and
the ``TRANSITIONS`` table, in the style of h11's ``_state.py``): the timers, what
incoming bytes mean, and whether reading goes on all follow from the state alone.
"""

from __future__ import annotations

import asyncio
import enum
import http
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    ProtocolMixin = asyncio.Protocol
else:
    ProtocolMixin = object
"""Base of ``VendProtocol``'s mixins (``app.server.clock``, ``flow``, ``answers``,
``dispatch``): ``asyncio.Protocol`` to the type checker, ``object`` at run time, where
``VendProtocol`` itself derives from ``asyncio.Protocol`` after them."""

MAX_REQUEST_TARGET_BYTES: Final = 8190
"""Longest request-target, in bytes: Apache's LimitRequestLine default. Longer: 414 (RFC
9110 section 15.5.15)."""
MAX_FIELD_BYTES: Final = 8190
"""Longest header field, name and value together, in bytes: Apache's
LimitRequestFieldSize default. Longer: 431 (RFC 6585 section 5)."""
MAX_FIELDS: Final = 100
"""Most header fields in one request head: Apache's LimitRequestFields default. More: 431."""
MAX_HEAD_BYTES: Final = 64 * 1024
"""Largest request head (request line, fields, blank line), in bytes. More: 431."""
MAX_PIPELINED_REQUESTS: Final = 16
"""Most requests parsed and waiting behind the one being answered, per connection."""
MAX_DISCARDED_BODY_BYTES: Final = 64 * 1024
"""Largest request body read and discarded, in bytes. Longer: 413 (RFC 9110 section
15.5.14) and the connection closes."""
BODY_SLICE_BYTES: Final = 1024
"""Bytes of a chunked body fed to the parser at once, so that the head after it is
counted before it is parsed."""
DEFAULT_REQUEST_HEAD_S: Final = 20.0
"""Default time for a whole request, in seconds: mod_reqtimeout's ``header=20``."""
DEFAULT_KEEP_ALIVE_S: Final = 5.0
"""Default idle time between requests, in seconds."""
DEFAULT_SEND_S: Final = 30.0
"""Default time a client may accept no bytes while vend has some to send, in seconds."""
LINGER_S: Final = 2.0
"""How long a refused connection is read and discarded before it is closed, in seconds
(Apache's lingering close waits 2 s)."""

_RFC9110_PHRASES: Final = {
    413: "Content Too Large",  # RFC 9110 section 15.5.14
    414: "URI Too Long",  # section 15.5.15
    416: "Range Not Satisfiable",  # section 15.5.17
    422: "Unprocessable Content",  # section 15.5.21
}
REASON_PHRASES: Final[dict[int, str]] = {
    int(status): _RFC9110_PHRASES.get(int(status), status.phrase) for status in http.HTTPStatus
}
"""Reason phrase of each status code, as RFC 9110 section 15 names them."""


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """The timeouts a connection runs by, from ``timeouts.*`` in the settings.

    Attributes:
        request_head_s: time for a whole request from its first byte, and for a new
            connection's first byte, in seconds.
        keep_alive_s: idle time allowed between requests, in seconds.
        send_s: time a client may accept no bytes while vend has some to send, in seconds.
        max_connections: most client connections at once in this process; past it a new
            connection is closed at once (None: no cap).
    """

    request_head_s: float = DEFAULT_REQUEST_HEAD_S
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S
    send_s: float = DEFAULT_SEND_S
    max_connections: int | None = None


def default_max_connections(nofile: int, mounts: int, threads_per_mount: int) -> int:
    """The default cap on client connections for a descriptor limit.

    Each connection may hold a file being sent as well as its socket, and each mount's
    threads and probe hold descriptors while they run, so the cap leaves room for them:
    ``(nofile - 64 - mounts * (threads_per_mount + 1)) // 2``, at least 16.

    Args:
        nofile: the soft ``RLIMIT_NOFILE``, in descriptors.
        mounts: how many mounts are configured.
        threads_per_mount: each mount's thread pool size.

    Returns:
        The cap, in connections.
    """
    return max(16, (nofile - 64 - mounts * (threads_per_mount + 1)) // 2)


class ReadState(enum.Enum):
    """Where the reading side of a connection is."""

    __hash__ = object.__hash__  # Enum's own hashes the name in Python: slow per request

    IDLE = "idle"
    """Between requests: the next byte starts a request head."""
    HEAD = "head"
    """Part of a request head has arrived."""
    BODY = "body"
    """The head is complete; its body is being read and discarded."""
    DONE = "done"
    """No more requests will be read (``Connection: close``, HTTP/1.0, shutdown, an
    upgrade); the connection closes once every answer is out."""
    REFUSED = "refused"
    """A refusal (or a silent close) waits behind the earlier answers."""
    LINGER = "linger"
    """The refusal is out and the write side shut: incoming bytes are discarded."""
    CLOSED = "closed"


class Event(enum.Enum):
    """What happens to a connection's reading side."""

    __hash__ = object.__hash__

    HEAD_BYTES = "head_bytes"
    HEAD_COMPLETE = "head_complete"
    """The head ended and a body follows."""
    MESSAGE_COMPLETE = "message_complete"
    LAST_MESSAGE = "last_message"
    """A request complete, after which the connection closes (``Connection: close``,
    HTTP/1.0 without keep-alive, an upgrade asked for)."""
    REFUSE = "refuse"
    REFUSAL_SENT = "refusal_sent"
    STOP = "stop"
    """Read no more requests: graceful shutdown, or the client closed its side."""
    LOST = "lost"


S, E = ReadState, Event
TRANSITIONS: Final[dict[tuple[ReadState, Event], ReadState]] = {
    (S.IDLE, E.HEAD_BYTES): S.HEAD,
    (S.HEAD, E.HEAD_BYTES): S.HEAD,
    (S.HEAD, E.HEAD_COMPLETE): S.BODY,
    (S.HEAD, E.MESSAGE_COMPLETE): S.IDLE,  # a request without a body
    (S.HEAD, E.LAST_MESSAGE): S.DONE,
    (S.BODY, E.MESSAGE_COMPLETE): S.IDLE,
    (S.BODY, E.LAST_MESSAGE): S.DONE,
    (S.IDLE, E.REFUSE): S.REFUSED,
    (S.HEAD, E.REFUSE): S.REFUSED,
    (S.BODY, E.REFUSE): S.REFUSED,
    (S.DONE, E.REFUSE): S.DONE,
    (S.REFUSED, E.REFUSE): S.REFUSED,
    (S.REFUSED, E.REFUSAL_SENT): S.LINGER,
    (S.LINGER, E.REFUSE): S.LINGER,
    (S.IDLE, E.STOP): S.DONE,
    (S.HEAD, E.STOP): S.DONE,
    (S.BODY, E.STOP): S.DONE,
    (S.DONE, E.STOP): S.DONE,
    (S.REFUSED, E.STOP): S.REFUSED,
    (S.LINGER, E.STOP): S.LINGER,
}
"""Every allowed transition; ``LOST`` leads to ``CLOSED`` from any state. Anything else
is a bug in vend (``ProtocolStateError``)."""
del S, E


class ProtocolStateError(RuntimeError):
    """A transition the state machine does not allow: a bug in vend, never the client's."""


def next_state(state: ReadState, event: Event) -> ReadState:
    """The state after ``event``.

    Args:
        state: the current state.
        event: what happened.

    Returns:
        The new state.

    Raises:
        ProtocolStateError: ``TRANSITIONS`` has no such move.
    """
    if event is Event.LOST:
        return ReadState.CLOSED
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise ProtocolStateError(f"{event.value} in state {state.value}") from None
