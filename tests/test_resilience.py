"""The breaker, the bulkhead and the backoff, without HTTP."""

from __future__ import annotations

import threading
import time

import pytest

from chatd.errors import ProviderBusy, ProviderCooling
from chatd.resilience import BACKOFF_MAX, Bulkhead, CircuitBreaker, retry_delay


class Gauge:
    def __init__(self):
        self.value = 0

    def set(self, value):
        self.value = value

    def inc(self):
        self.value += 1

    def dec(self):
        self.value -= 1


def test_breaker_opens_after_n_failures_in_a_row():
    gauge = Gauge()
    breaker = CircuitBreaker("p", failures=3, cooldown=60, gauge=gauge)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # the run is broken: counting starts again
    breaker.record_failure()
    breaker.record_failure()
    breaker.before_call()
    breaker.record_failure()
    with pytest.raises(ProviderCooling) as raised:
        breaker.before_call()
    assert int(raised.value.headers["Retry-After"]) >= 59
    assert breaker.state()["reason"] == "cooldown"
    assert gauge.value == 1


def test_one_trial_after_the_cooldown_then_closed_or_open_again():
    breaker = CircuitBreaker("p", failures=1, cooldown=0.1)
    breaker.record_failure()
    time.sleep(0.15)
    breaker.before_call()  # the trial
    with pytest.raises(ProviderCooling):
        breaker.before_call()  # only one at a time
    breaker.record_failure()  # the trial failed: cool down again
    with pytest.raises(ProviderCooling):
        breaker.before_call()
    time.sleep(0.15)
    breaker.before_call()
    breaker.record_success()
    breaker.before_call()
    assert breaker.state() is None


def test_a_trial_that_never_reached_the_provider_is_released():
    breaker = CircuitBreaker("p", failures=1, cooldown=0.05)
    breaker.record_failure()
    time.sleep(0.1)
    breaker.before_call()
    breaker.release_trial()
    breaker.before_call()  # another trial may go


def test_bulkhead_limits_and_sheds_after_the_queue_timeout():
    gauge = Gauge()
    bulkhead = Bulkhead("p", limit=2, queue_timeout=0.2, gauge=gauge)
    bulkhead.acquire()
    bulkhead.acquire()
    assert (bulkhead.in_flight, gauge.value) == (2, 2)
    started = time.monotonic()
    with pytest.raises(ProviderBusy) as raised:
        bulkhead.acquire()
    assert 0.15 <= time.monotonic() - started < 1
    assert raised.value.headers["Retry-After"] == "1"
    threading.Timer(0.05, bulkhead.release).start()
    bulkhead.acquire()  # a slot freed while waiting
    assert bulkhead.in_flight == 2


def test_an_unlimited_bulkhead_only_counts():
    bulkhead = Bulkhead("p", limit=0, queue_timeout=0)
    for _ in range(100):
        bulkhead.acquire()
    assert bulkhead.in_flight == 100


def test_backoff_grows_with_jitter_and_is_capped():
    first = [retry_delay(0, None) for _ in range(50)]
    assert all(0.2 <= d <= 0.3 for d in first) and len(set(first)) > 1
    assert all(0.4 <= retry_delay(1, None) <= 0.6 for _ in range(20))
    assert all(retry_delay(20, None) <= BACKOFF_MAX * 1.2 for _ in range(20))
    assert retry_delay(0, 3.0) == 3.0
