"""Steady concurrent load through the test Apache, recording when each request ran and
whether it got the right bytes, so tests can line failures up against events (a backend
stopped or killed at a known instant).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from .client import LEGACY_NAME, front_client


@dataclass(frozen=True)
class Outcome:
    """One request of the load.

    Attributes:
        started: ``time.monotonic()`` when it was sent, in seconds.
        ended: ``time.monotonic()`` when its body was complete or it failed, in seconds.
        ok: it got 200 and exactly the expected bytes.
        detail: the status or exception, for failure messages.
    """

    started: float
    ended: float
    ok: bool
    detail: str

    def in_flight_at(self, instant: float) -> bool:
        """Whether the request was under way at ``instant`` (a ``time.monotonic()`` value)."""
        return self.started <= instant <= self.ended


class Load:
    """``connections`` threads, each with its own keep-alive HTTPS connection, fetching
    ``files`` round-robin through Apache until ``stop``; bounded by ``max_duration_s``.

    Args:
        https_port: Apache's HTTPS port.
        ca_pem: the CA the clients trust.
        files: name (without leading ``/``) to the bytes it must return.
        connections: concurrent client connections.
        pace_bytes_per_s: read each body at most this fast (a slow client, so that its
            request stays in flight on the backend); None reads as fast as it can.
        pause_s: seconds each connection waits between two requests.
        max_duration_s: the threads stop by themselves after this many seconds.
    """

    def __init__(
        self,
        https_port: int,
        ca_pem: Path,
        files: Mapping[str, bytes],
        *,
        connections: int = 50,
        pace_bytes_per_s: float | None = None,
        pause_s: float = 0.0,
        max_duration_s: float = 60.0,
    ) -> None:
        self.outcomes: list[Outcome] = []
        self._under_way: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._files = list(files.items())
        self._base = f"https://{LEGACY_NAME}:{https_port}"
        self._ca_pem = ca_pem
        self._pace = pace_bytes_per_s
        self._pause_s = pause_s
        self._deadline = time.monotonic() + max_duration_s
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(connections)
        ]

    def _run(self, index: int) -> None:
        turn = index
        with front_client(self._ca_pem, timeout_s=20) as client:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                name, expected = self._files[turn % len(self._files)]
                turn += 1
                started = time.monotonic()
                with self._lock:
                    self._under_way[index] = started
                try:
                    status, body = self._fetch(client, f"{self._base}/{name}")
                    ok = status == 200 and body == expected
                    detail = f"{status} {name} ({len(body)} bytes)"
                except httpx.HTTPError as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc} ({name})"
                with self._lock:
                    del self._under_way[index]
                    self.outcomes.append(Outcome(started, time.monotonic(), ok, detail))
                if self._pause_s:
                    self._stop.wait(self._pause_s)

    def _fetch(self, client: httpx.Client, url: str) -> tuple[int, bytes]:
        """GET ``url``; return the status and the body, read at the configured pace."""
        if self._pace is None:
            response = client.get(url)
            return response.status_code, response.content
        chunks = []
        started = time.monotonic()
        received = 0
        with client.stream("GET", url) as response:
            for chunk in response.iter_bytes(64 * 1024):
                chunks.append(chunk)
                received += len(chunk)
                ahead_s = received / self._pace - (time.monotonic() - started)
                if ahead_s > 0:
                    time.sleep(ahead_s)
        return response.status_code, b"".join(chunks)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every thread after its current request and wait for them (bounded)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def snapshot(self) -> list[Outcome]:
        """Return the outcomes recorded so far."""
        with self._lock:
            return list(self.outcomes)

    def under_way(self) -> list[float]:
        """Return when each request under way now was sent (``time.monotonic()``, seconds)."""
        with self._lock:
            return list(self._under_way.values())
