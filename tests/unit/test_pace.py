"""A mount's pace: lookup deadline and overdue state (app.federation.pace)."""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

import pytest

from app.federation.pace import FLOOR_S, Pace, RunWatch


def _finished(pace: Pace, duration_s: float, error: bool = False) -> None:
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()
    future.started_at = time.monotonic() - duration_s  # type: ignore[attr-defined]
    pace._in_flight[id(future)] = future
    future.add_done_callback(pace._finished)
    if error:
        future.set_exception(OSError("EIO"))
    else:
        future.set_result(None)


@pytest.mark.parametrize(
    ("durations", "expected"),
    [
        ([], FLOOR_S),
        ([0.001] * 20, FLOOR_S),
        ([0.1] * 20, 0.4),
        ([2.4] * 20, 4.0),
        ([0.001] * 60 + [2.4] * 4, FLOOR_S),
        ([0.001] * 50 + [2.4] * 14, 4.0),
    ],
    ids=["none", "fast", "100ms", "slow-capped", "few-outliers", "step-to-slow"],
)
def test_deadline_follows_the_recent_p90_between_floor_and_ceiling(
    durations: list[float], expected: float
) -> None:
    """The deadline is 4x the recent 90th percentile, at least 0.2 s, at most 0.8 fs_op_s."""
    pace = Pace(fs_op_s=5.0)
    for duration in durations:
        _finished(pace, duration)
    assert pace.deadline_s() == pytest.approx(expected, rel=0.05)


def test_failures_and_timeouts_are_not_latency() -> None:
    """Failed calls and calls longer than fs_op_s do not raise the deadline."""
    pace = Pace(fs_op_s=5.0)
    for _ in range(20):
        _finished(pace, 3.0, error=True)
        _finished(pace, 6.0)
    assert pace.deadline_s() == FLOOR_S


def test_overdue_needs_a_call_past_the_deadline_and_no_progress() -> None:
    """A call running past the deadline makes the mount overdue only while no other call
    finishes within the deadline."""
    pace = Pace(fs_op_s=5.0)
    stuck: Future[Any] = Future()
    stuck.set_running_or_notify_cancel()
    stuck.started_at = time.monotonic() - 1.0  # type: ignore[attr-defined]
    pace._in_flight[id(stuck)] = stuck
    pace._last_done = time.monotonic() - 1.0
    assert pace.is_overdue(time.monotonic())
    _finished(pace, 0.01)  # progress
    assert not pace.is_overdue(time.monotonic())
    assert pace.oldest_running_s(time.monotonic()) >= 1.0


def test_run_watch_counts_running_time_only() -> None:
    """A queued call has run 0 s; a started one its age."""
    watch = RunWatch()
    future: Future[Any] = Future()
    watch.bind(future)
    assert watch.running_s(time.monotonic()) == 0.0
    future.set_running_or_notify_cancel()
    future.started_at = time.monotonic() - 0.5  # type: ignore[attr-defined]
    assert watch.running_s(time.monotonic()) >= 0.5
    future.set_result(None)
    assert watch.running_s(time.monotonic()) == 0.0
