"""The uvicorn internals vend's protocol relies on (app.protocol): fail loudly if they change.

pyproject.toml pins uvicorn to one minor version; moving that pin means re-reading
uvicorn's httptools protocol and updating app/protocol.py together with this test.
"""

from __future__ import annotations

import inspect

import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

PINNED_MINOR = "0.54"


def test_uvicorn_is_the_pinned_minor_version() -> None:
    """The installed uvicorn is the minor version app/protocol.py was written against."""
    assert uvicorn.__version__.rsplit(".", 1)[0] == PINNED_MINOR, uvicorn.__version__


def test_protocol_hooks_exist_with_their_signatures() -> None:
    """on_message_begin builds self.scope; _start_asgi_task(cycle, app) starts each request."""
    assert list(inspect.signature(HttpToolsProtocol._start_asgi_task).parameters) == [
        "self",
        "cycle",
        "app",
    ]
    assert "self.scope = {" in inspect.getsource(HttpToolsProtocol.on_message_begin)
    assert "cycle.run_asgi(app)" in inspect.getsource(HttpToolsProtocol._start_asgi_task)


def test_cycle_attributes_used_by_zero_copy_send() -> None:
    """run_asgi passes self.send; send keeps expected_content_length and the state flags."""
    assert "self.scope, self.receive, self.send" in inspect.getsource(RequestResponseCycle.run_asgi)
    init = inspect.getsource(RequestResponseCycle.__init__)
    for attribute in (
        "self.transport",
        "self.flow",
        "self.disconnected",
        "self.keep_alive",
        "self.response_started",
        "self.response_complete",
        "self.expected_content_length",
    ):
        assert attribute in init, attribute
    send = inspect.getsource(RequestResponseCycle.send)
    assert "self.expected_content_length -= num_bytes" in send
    assert "if self.expected_content_length != 0" in send
    assert hasattr(httptools_impl, "FlowControl")
