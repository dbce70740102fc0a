"""The hot path and the ASGI path give the same answers, byte for byte but for Date.

A hypothesis property test sends the same requests to a connection with the hot path
on and to one with it forced off (same application, same cache) and compares status,
every header but Date, body, and whether the connection stays open. The hostile-path
corpus (tests/hostile-paths.tsv) goes through both paths the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.server.hotpath import CLOSE, KEEP_ALIVE, DateField, hot_path_for
from tests.support import read_hostile_paths
from tests.unit.memory_transport import Response, Server, make_server, make_tree, parse_responses

TARGETS = [
    b"/small.txt",
    b"/small.txt?v=3",
    b"/sm%61ll.txt",
    b"/dir/nested.css",
    b"/page.html",
    b"/index.html",
    b"/nope.txt",
    b"/",
    b"/dir/",
    b"/a%2fb.txt",
    b"/.hidden",
    b"/small.txt?",
    b"http://example.org/small.txt",
]


def _answer(
    server: Server, loop: asyncio.AbstractEventLoop, request: bytes, method: str, *, hot: bool
) -> tuple[Response, bool]:
    """One request on a new connection: its answer and whether the connection closed."""

    async def go() -> tuple[Response, bool]:
        conn = server.connect(hot=hot)
        await conn.send(request)
        (answer,) = await conn.wait_responses([method])
        await asyncio.sleep(0)
        return answer, conn.transport.closed or conn.transport.eof

    return loop.run_until_complete(go())


def _without_date(response: Response) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    assert [n for n, _ in response.headers].count(b"date") == 1
    return (
        response.status,
        response.reason,
        [(n, v) for n, v in response.headers if n != b"date"],
        response.body,
    )


def _setup(tmp_path: Path) -> tuple[asyncio.AbstractEventLoop, Server, bytes]:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(make_server(make_tree(tmp_path)))
    server.app.cache.ttl_s = 3600.0  # the property test must not race the cache's TTL
    etag = b""
    for target in (b"/small.txt", b"/dir/nested.css", b"/page.html", b"/index.html"):
        request = b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n"
        answer, _ = _answer(server, loop, request, "GET", hot=True)
        if target == b"/small.txt":
            etag = answer.header(b"etag") or b""
    return loop, server, etag


def _teardown(loop: asyncio.AbstractEventLoop, server: Server) -> None:
    for mount in server.app.mounts:
        mount.close()
    loop.close()


def test_hot_and_asgi_paths_answer_alike(tmp_path: Path) -> None:
    """Same requests, hot path on and off: same status, headers but Date, body, and closing."""
    loop, server, etag = _setup(tmp_path)
    fields = st.lists(
        st.sampled_from(
            [
                b"If-None-Match: " + etag,
                b"If-None-Match: W/" + etag,
                b'If-None-Match: "other"',
                b"If-None-Match: *",
                b'If-None-Match: "x", ' + etag,
                b"Connection: close",
                b"Connection: keep-alive",
                b"User-Agent: hypothesis",
                b"Referer: http://example.org/",
                b"Range: bytes=0-3",
                b"If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT",
                b"Accept-Encoding: gzip",
            ]
        ),
        max_size=4,
    )

    @settings(max_examples=200, deadline=None, database=None)
    @given(
        method=st.sampled_from(["GET", "HEAD"]),
        target=st.sampled_from(TARGETS),
        version=st.sampled_from([b"1.1", b"1.0"]),
        extra=fields,
    )
    def check(method: str, target: bytes, version: bytes, extra: list[bytes]) -> None:
        request = (
            method.encode()
            + b" "
            + target
            + b" HTTP/"
            + version
            + b"\r\nHost: t\r\n"
            + b"".join(f + b"\r\n" for f in extra)
            + b"\r\n"
        )
        hot, hot_closed = _answer(server, loop, request, method, hot=True)
        cold, cold_closed = _answer(server, loop, request, method, hot=False)
        assert _without_date(hot) == _without_date(cold), request
        assert hot_closed == cold_closed

    hot = hot_path_for(server.app, lambda: None)
    answered = []
    real_answer = hot.answer

    def counting_answer(*args: Any) -> tuple[bytes, int, int]:
        answered.append(args[2])
        return real_answer(*args)

    hot.answer = counting_answer  # type: ignore[method-assign]
    try:
        check()
        assert len(answered) > 20  # the hot path really answered, 304s included
        assert any(inm is not None for inm in answered)
    finally:
        _teardown(loop, server)


def test_hostile_path_corpus_gets_the_same_refusal_on_both_paths(tmp_path: Path) -> None:
    """Every corpus row, sent twice with the hot path on and once with it off: same answer, never 5xx."""
    loop, server, _ = _setup(tmp_path)
    try:
        for row in read_hostile_paths():
            request = b"GET " + row["raw_path"].encode("utf-8") + b" HTTP/1.1\r\nHost: t\r\n\r\n"
            _answer(server, loop, request, "GET", hot=True)  # a valid name is cached now
            hot, _ = _answer(server, loop, request, "GET", hot=True)
            cold, _ = _answer(server, loop, request, "GET", hot=False)
            assert _without_date(hot) == _without_date(cold), row["raw_path"][:80]
            assert hot.status in {200, 400, 404, 414, 431}, row["raw_path"][:80]
            if hot.status == 200:
                assert hot.body == b"<html>index</html>\n", row["raw_path"][:80]
    finally:
        _teardown(loop, server)


def test_hot_path_answers_a_cached_file_without_asgi(tmp_path: Path) -> None:
    """A fresh cached small file is answered by the protocol: no task is started for it."""
    loop, server, _ = _setup(tmp_path)
    try:

        async def go() -> None:
            conn = server.connect()
            await conn.send(b"GET /small.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            assert conn.protocol._active is None  # answered in data_received itself
            (answer,) = parse_responses(bytes(conn.transport.out), ["GET"])
            assert answer.status == 200

        loop.run_until_complete(go())
    finally:
        _teardown(loop, server)


def test_an_entrys_first_answer_is_the_bytes_of_its_later_ones(tmp_path: Path) -> None:
    """The first 200 of a cache entry (built without a ``Prebuilt``), the second (which
    makes one) and a later one (from the kept ``Prebuilt`` and its answer of the second)
    are the same bytes, for GET and HEAD and every Connection field the hot path adds."""
    loop, server, _ = _setup(tmp_path)
    try:
        hot = hot_path_for(server.app, lambda: None)
        hot.date = lambda: b"Mon, 07 Dec 2026 16:00:00 GMT"  # type: ignore[assignment,method-assign]
        entry = hot.lookup(b"/small.txt")
        assert entry is not None and entry.body
        for head in (False, True):
            for connection in (b"", CLOSE, KEEP_ALIVE):
                fresh = dataclasses.replace(entry, prebuilt=None)
                answers = [hot.answer(fresh, head, None, connection) for _ in range(3)]
                assert answers[0] == answers[1] == answers[2], (head, connection)
                data, status, sent = answers[0]
                assert status == 200
                assert sent == (0 if head else len(entry.body))
                assert data.endswith(b"\r\n\r\n" + (b"" if head else entry.body))
                assert connection in data
    finally:
        _teardown(loop, server)


def test_date_field_is_an_imf_fixdate_formatted_once_a_second() -> None:
    """The Date value is one object within a second (formatted once), an IMF-fixdate."""
    date = DateField()
    first = date()
    assert first.endswith(b" GMT") and len(first) == 29
    assert date() is first or date() != first


def test_stale_hot_name_is_looked_up_once_for_many_waiting_requests(tmp_path: Path) -> None:
    """Twenty connections ask for a hot name just gone stale: one mount lookup, twenty whole answers."""
    loop, server, _ = _setup(tmp_path)
    try:

        async def go() -> None:
            conn = server.connect()  # answered by the hot path: the target is known there
            await conn.send(b"GET /small.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            await conn.wait_responses(["GET"])
            entry = server.app.cache.get("small.txt", asyncio.get_running_loop().time())
            assert entry is not None
            server.app.cache.ttl_s = 2.0
            entry.checked_at -= 10.0  # stale now
            await _ask_at_once(server, b"/small.txt", b"small file body\n")

        loop.run_until_complete(go())
    finally:
        _teardown(loop, server)


def test_name_never_asked_is_looked_up_once_for_many_requests_at_once(tmp_path: Path) -> None:
    """Twenty connections ask at once for a name not in the cache: one mount lookup, twenty whole answers."""
    loop, server, _ = _setup(tmp_path)
    try:
        (tmp_path / "m1" / "fresh.txt").write_bytes(b"asked by many at once\n")

        async def go() -> None:
            await _ask_at_once(server, b"/fresh.txt", b"asked by many at once\n")

        loop.run_until_complete(go())
    finally:
        _teardown(loop, server)


async def _ask_at_once(server: Server, target: bytes, body: bytes) -> None:
    """Twenty connections ask for ``target`` at once: twenty whole answers, one lookup."""
    before = server.app.metrics.render().decode()
    conns = [server.connect() for _ in range(20)]
    for conn in conns:
        await conn.send(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    for conn in conns:
        (answer,) = await conn.wait_responses(["GET"])
        assert (answer.status, answer.body) == (200, body)
    after = server.app.metrics.render().decode()
    assert _count(after, "miss") - _count(before, "miss") == 1
    assert _count(after, "hit") - _count(before, "hit") == 19


def _count(metrics: str, outcome: str) -> float:
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith(f'vend_cache_lookups_total{{outcome="{outcome}"}}')
    )
    return float(line.split()[-1])


def test_waiting_for_a_refresh_ends_with_the_lookup_not_the_download(tmp_path: Path) -> None:
    """A hot name that grew past the cache's limit: requests waiting on its refresh start at once."""
    loop, server, _ = _setup(tmp_path)
    try:

        async def go() -> None:
            conn = server.connect()
            await conn.send(b"GET /small.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            await conn.wait_responses(["GET"])
            (tmp_path / "m1" / "small.txt").write_bytes(b"x" * (300 * 1024))
            entry = server.app.cache.get("small.txt", asyncio.get_running_loop().time())
            assert entry is not None
            server.app.cache.ttl_s = 2.0
            entry.checked_at -= 10.0  # stale now
            slow = [server.connect(high_water=1024) for _ in range(3)]  # never drained
            for conn in slow:
                await conn.send(b"GET /small.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            for _ in range(1000):
                if all(c.transport.out.startswith(b"HTTP/1.1 200 OK") for c in slow):
                    break
                await asyncio.sleep(0.005)
            assert all(c.transport.out.startswith(b"HTTP/1.1 200 OK") for c in slow)
            for conn in slow:  # the clients go away: their answers end
                conn.transport.close()
            for _ in range(200):
                if all(c.protocol._active is None for c in slow):
                    break
                await asyncio.sleep(0.005)

        loop.run_until_complete(go())
    finally:
        _teardown(loop, server)
