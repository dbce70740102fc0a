"""The balancer variant (apache/vend-balancer.conf): two vend backends behind one Apache,
under 50 concurrent connections, lose one to SIGTERM without a failed request and one to
SIGKILL failing only the requests it had in hand; a vend whose health endpoint says it has
no usable mount leaves the rotation."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import wait_until

from .backend import PROBE_USER_AGENT, Vend
from .conftest import Content, Pki, StartApache, StartVend
from .httpd import BALANCER_MODULES, BASE_MODULES, SHIPPED_BALANCER_VHOST, Apache
from .load import Load, Outcome

pytestmark = pytest.mark.apache

CONNECTIONS = 50
"""Client connections kept open through each event (each with a request every ~50 ms)."""
SLOW_CONNECTIONS = 6
MIN_IN_FLIGHT = SLOW_CONNECTIONS
"""Requests that must be under way (through Apache) at the instant a backend is lost."""
MIB = 1024 * 1024


def _balanced_apache(apache_factory: StartApache, *members: Vend) -> Apache:
    """Apache with the shipped balancer vhost in front of ``members``."""
    return apache_factory(
        vhost=SHIPPED_BALANCER_VHOST,
        backends=tuple(m.address for m in members),
        modules=BASE_MODULES + BALANCER_MODULES,
    )


def _content_lines(vend: Vend) -> int:
    """Return how many content requests (not health checks) vend has logged."""
    return sum(1 for line in vend.access_lines() if "/.well-known/vend/" not in line)


def _health_checks(vend: Vend) -> int:
    """Return how many of Apache's health checks vend has logged (not the tests' probes)."""
    return sum(
        "/.well-known/vend/health" in line and PROBE_USER_AGENT not in line
        for line in vend.access_lines()
    )


def _failures(outcomes: list[Outcome]) -> list[Outcome]:
    """Return the requests that failed or got wrong bytes."""
    return [o for o in outcomes if not o.ok]


def _load_files(content: Content) -> dict[str, bytes]:
    """Small and middle-sized files for the fast clients."""
    names = ("index.html", "docs/manual.pdf", "css/site.css", "shared.txt")
    return {name: content.file(name) for name in names}


@pytest.fixture(scope="module")
def slow_file(content: Content) -> Iterator[dict[str, bytes]]:
    """A 24 MiB file for slow clients, so that requests stay in flight on a backend for
    over a second (more than socket buffers hold); removed after this module."""
    data = os.urandom(24 * MIB)
    path = content.mounts[1] / "big" / "slow.bin"
    path.parent.mkdir(exist_ok=True)
    path.parent.chmod(0o755)
    path.write_bytes(data)
    try:
        yield {"big/slow.bin": data}
    finally:
        path.unlink(missing_ok=True)


def _ready_for_the_event(fast: Load, slow: Load) -> bool:
    """Whether the load has run for over a second and every slow download is under way
    with at least half a second left (each takes 2 s or more at its pace), so that requests
    are in flight on both members at the instant a test acts."""
    now = time.monotonic()
    outcomes = fast.snapshot()
    under_way = slow.under_way()
    return (
        bool(outcomes)
        and min(o.started for o in outcomes) <= now - 1.2
        and len(under_way) == SLOW_CONNECTIONS
        and all(started > now - 1.5 for started in under_way)
    )


def _served_since(load: Load, instant: float) -> int:
    """How many requests sent after ``instant`` (``time.monotonic()``) have ended."""
    return sum(o.started > instant for o in load.snapshot())


def _mixed_load(
    apache: Apache, pki: Pki, content: Content, slow_file: dict[str, bytes]
) -> tuple[Load, Load]:
    """44 fast clients (small files, a request every ~50 ms each) and 6 slow downloads
    (24 MiB at 12 MiB/s), 50 connections in all; the slow ones are always in flight."""
    fast = Load(
        apache.https_port,
        pki.ca_pem,
        _load_files(content),
        connections=CONNECTIONS - SLOW_CONNECTIONS,
        pause_s=0.05,
    )
    slow = Load(
        apache.https_port,
        pki.ca_pem,
        slow_file,
        connections=SLOW_CONNECTIONS,
        pace_bytes_per_s=12 * MIB,
    )
    return fast, slow


def test_sigterm_of_one_member_fails_no_request(
    vend_factory: StartVend,
    apache_factory: StartApache,
    pki: Pki,
    content: Content,
    slow_file: dict[str, bytes],
) -> None:
    """Under 50 concurrent connections (44 fast clients, 6 slow downloads), vend A stopped
    with SIGTERM while requests are in flight on it: A finishes them, and no request fails.

    vend runs with ``timeouts.drain_s = 5``, as apache/README.md says for the balancer:
    after SIGTERM it answers health 503 and closes each connection after its response
    until Apache's health checks (2 failures, 2 s apart) have taken it out."""
    first, second = vend_factory(drain_s=5), vend_factory(drain_s=5)
    apache = _balanced_apache(apache_factory, first, second)
    fast, slow = _mixed_load(apache, pki, content, slow_file)
    with fast, slow:
        wait_until(
            lambda: _content_lines(first) > 20 and _content_lines(second) > 20,
            15,
            "both members serve",
        )
        wait_until(lambda: _ready_for_the_event(fast, slow), 60, "slow downloads under way")
        logged_before_term = _content_lines(first)
        term_at = time.monotonic()
        first.signal(signal.SIGTERM)
        first.process.wait(timeout=30)
        finished_after_term = _content_lines(first) - logged_before_term
        gone_at = time.monotonic()
        wait_until(lambda: _served_since(fast, gone_at) > 50, 30, "requests after A exited")
    outcomes = fast.snapshot() + slow.snapshot()

    assert len([o for o in outcomes if o.in_flight_at(term_at)]) >= MIN_IN_FLIGHT
    assert finished_after_term > 0, "SIGTERM did not reach vend A while it had requests"
    assert min(o.started for o in outcomes) <= term_at - 1.0
    assert max(o.ended for o in outcomes) >= term_at + 1.0
    failed = _failures(outcomes)
    assert failed == [], [
        f"{o.started - term_at:+.3f}s..{o.ended - term_at:+.3f}s {o.detail}" for o in failed[:10]
    ]


def test_sigkill_of_one_member_fails_only_requests_in_flight(
    vend_factory: StartVend,
    apache_factory: StartApache,
    pki: Pki,
    content: Content,
    slow_file: dict[str, bytes],
) -> None:
    """Under 50 concurrent connections (44 fast clients, 6 slow downloads), vend B killed
    with SIGKILL: only requests in flight while it died fail; B started again is back in the
    rotation within seconds."""
    first, second = vend_factory(), vend_factory()
    apache = _balanced_apache(apache_factory, first, second)
    fast, slow = _mixed_load(apache, pki, content, slow_file)
    with fast, slow:
        wait_until(
            lambda: _content_lines(first) > 20 and _content_lines(second) > 20,
            15,
            "both members serve",
        )
        wait_until(lambda: _ready_for_the_event(fast, slow), 60, "slow downloads under way")
        kill_at = time.monotonic()
        os.killpg(second.process.pid, signal.SIGKILL)
        second.process.wait(timeout=10)
        dead_at = time.monotonic()
        # Served by A alone for a while (and for over a second: see the assertions).
        wait_until(
            lambda: _served_since(fast, dead_at) > 20 and time.monotonic() > dead_at + 1.0,
            30,
            "requests while B is dead",
        )

        restarted = vend_factory(port=second.port)
        back_at = time.monotonic()
        wait_until(lambda: _content_lines(restarted) > 0, 30, "restarted member back in use")
        back_after_s = time.monotonic() - back_at
        wait_until(lambda: _served_since(fast, dead_at) > 50, 30, "requests after B died")
    outcomes = fast.snapshot() + slow.snapshot()

    assert len([o for o in outcomes if o.in_flight_at(kill_at)]) >= MIN_IN_FLIGHT
    assert min(o.started for o in outcomes) <= kill_at - 1.0
    assert max(o.ended for o in outcomes) >= dead_at + 1.0
    failed = _failures(outcomes)
    not_in_flight = [o for o in failed if o.ended < kill_at or o.started > dead_at]
    assert not_in_flight == [], [
        f"{o.started - kill_at:+.3f}s..{o.ended - kill_at:+.3f}s {o.detail}"
        for o in not_in_flight[:10]
    ]
    assert sum(o.ok and o.started > dead_at for o in outcomes) > 50
    assert back_after_s < 8.0


def test_member_without_usable_mount_leaves_rotation(
    vend_factory: StartVend,
    apache_factory: StartApache,
    pki: Pki,
    content: Content,
    tmp_path: Path,
) -> None:
    """A member whose health endpoint answers 503 (its only mount is missing) is taken out
    of the rotation by the health checks, after which every request succeeds."""
    healthy = vend_factory()
    broken = vend_factory(mounts=[tmp_path / "not-mounted"], wait_healthy=False)
    apache = _balanced_apache(apache_factory, healthy, broken)
    # Apache checks a member's health one check after the other: once a third check has
    # reached it, the first two (failed) have taken it out of the rotation.
    wait_until(
        lambda: _health_checks(broken) >= 3,
        30,
        "three health checks reached the broken member",
    )
    with Load(apache.https_port, pki.ca_pem, _load_files(content), connections=10) as load:
        wait_until(lambda: len(load.snapshot()) > 50, 30, "over 50 requests answered")
    outcomes = load.snapshot()
    assert len(outcomes) > 50
    assert _failures(outcomes) == [], _failures(outcomes)[:5]
    assert _content_lines(broken) == 0
    assert _health_checks(broken) >= 2
