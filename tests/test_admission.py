"""Admission: a call is taken while a thread is free and nothing else ran out (issue 12)."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from chatd import admission
from chatd.admission import Admission, Pressure


class FixedPressure:
    reason: str | None = None

    def start(self):
        return self


def test_calls_past_the_capacity_are_refused_until_one_finishes():
    gate = Admission(3, FixedPressure())
    assert [gate.acquire() for _ in range(4)] == [True, True, True, False]
    assert "3 upstream calls in flight" in gate.reason
    gate.release()
    assert gate.acquire()


def test_pressure_refuses_new_calls_but_never_the_first():
    pressure = FixedPressure()
    gate = Admission(10, pressure)
    pressure.reason = "CPU saturated (scheduling lag 80 ms)"
    assert gate.acquire()  # nothing in flight: shedding would free nothing
    assert not gate.acquire()
    assert gate.reason == "chatd is at capacity: CPU saturated (scheduling lag 80 ms)"
    pressure.reason = None
    assert gate.acquire()


def test_releasing_more_than_acquired_is_a_bug_not_a_free_slot():
    gate = Admission(2, FixedPressure())
    with pytest.raises(ValueError):
        gate.release()


def test_a_high_lag_names_the_cpu_and_a_low_one_clears_it():
    pressure = Pressure(max_lag=0.05)
    pressure.lag = 0.08
    pressure.update()
    assert pressure.reason == "CPU saturated (scheduling lag 80 ms)"
    pressure.lag = 0.01
    pressure.update()
    assert pressure.reason is None


def test_descriptors_near_the_limit_are_a_reason(monkeypatch):
    pressure = Pressure(spare_fds=64)
    monkeypatch.setattr(admission, "_open_fds", lambda: 1000)
    assert pressure._slow_check(fd_limit=1024) == "file descriptors near the limit of 1024"
    assert pressure._slow_check(fd_limit=2048) is None


def test_little_available_memory_is_a_reason(monkeypatch):
    pressure = Pressure(min_available=64 << 20)
    monkeypatch.setattr(admission, "_open_fds", lambda: 10)
    monkeypatch.setattr(admission, "_available_bytes", lambda: 10 << 20)
    assert pressure._slow_check(fd_limit=1024) == "less than 64 MiB of memory available"


def test_the_probe_sees_a_saturated_interpreter():
    """A thread that holds the GIL for long stretches delays every wake-up: the
    probe's lag rises past the limit, and falls again once it stops."""
    pressure = Pressure(probe_seconds=0.01, max_lag=0.05)
    stop = threading.Event()

    def hog():
        while not stop.is_set():
            sum(range(10_000))

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.2)  # the hog keeps the GIL 200 ms at a time
    hogger = threading.Thread(target=hog, daemon=True)
    try:
        pressure.start()
        hogger.start()
        deadline = time.monotonic() + 10
        while pressure.reason is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pressure.reason is not None and pressure.reason.startswith("CPU saturated")
    finally:
        stop.set()
        hogger.join(5)
        sys.setswitchinterval(old)
    try:
        deadline = time.monotonic() + 10
        while pressure.reason is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pressure.reason is None
    finally:
        pressure.stop()
