"""The uvicorn internals vend's protocol relies on (app.server.protocol, app.server.limits): fail loudly if they change.

pyproject.toml pins uvicorn to one minor version; moving that pin means re-reading
uvicorn's httptools protocol and updating app/server/protocol.py together with this test.
"""

from __future__ import annotations

import inspect

import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

PINNED_MINOR = "0.54"


def test_uvicorn_is_the_pinned_minor_version() -> None:
    """The installed uvicorn is the minor version app/server/protocol.py was written against."""
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


def test_protocol_internals_used_by_request_limits() -> None:
    """app.server.limits feeds self.parser, swaps self.flow, bounds self.pipeline, reads url and headers."""
    made = inspect.getsource(HttpToolsProtocol.connection_made)
    assert "self.flow = FlowControl(transport)" in made
    assert "self.parser.feed_data(data)" in inspect.getsource(HttpToolsProtocol.data_received)
    assert "self.url += url" in inspect.getsource(HttpToolsProtocol.on_url)
    assert "self.headers.append((name, value))" in inspect.getsource(HttpToolsProtocol.on_header)
    begin = inspect.getsource(HttpToolsProtocol.on_message_begin)
    assert 'self.url = b""' in begin and "self.headers = []" in begin
    # Every request head ends with CRLF CRLF: no leniency about line ends is enabled.
    init = inspect.getsource(HttpToolsProtocol.__init__)
    assert "set_dangerous_leniencies(lenient_data_after_close=True)" in init
    assert init.count("lenient_") == 1
    headers_complete = inspect.getsource(HttpToolsProtocol.on_headers_complete)
    for fragment in (
        "existing_cycle = self.cycle",
        "self.cycle = RequestResponseCycle(",
        "flow=self.flow",
        "on_response=self.on_response_complete",
        "self.flow.pause_reading()",
        "self.pipeline.appendleft((self.cycle, app))",
    ):
        assert fragment in headers_complete, fragment
    response_complete = inspect.getsource(HttpToolsProtocol.on_response_complete)
    assert "self.flow.resume_reading()" in response_complete
    assert "cycle, app = self.pipeline.pop()" in response_complete
    assert "self._start_asgi_task(cycle, app)" in response_complete
    lost = inspect.getsource(HttpToolsProtocol.connection_lost)
    assert "self.cycle.disconnected = True" in lost
    assert "self.server_state.default_headers" in inspect.getsource(
        HttpToolsProtocol.send_400_response
    )
    assert "self.message_event" in inspect.getsource(RequestResponseCycle.__init__)


def test_flow_control_interface_used_by_the_read_gate() -> None:
    """FlowControl(transport) keeps read_paused and pauses/resumes the transport once each."""
    flow_control = httptools_impl.FlowControl
    assert list(inspect.signature(flow_control.__init__).parameters) == ["self", "transport"]
    assert "self.read_paused = False" in inspect.getsource(flow_control.__init__)
    assert "self._transport.pause_reading()" in inspect.getsource(flow_control.pause_reading)
    assert "self._transport.resume_reading()" in inspect.getsource(flow_control.resume_reading)
