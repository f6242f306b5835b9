"""Cooldowns on the shared board, the deadline, the bulkhead and the backoff, without HTTP."""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import pytest

from chatd import admission
from chatd.board import Board
from chatd.errors import ProviderBusy, ProviderCooling
from chatd.resilience import (
    BACKOFF_MAX,
    MODEL,
    PROVIDER,
    Bulkhead,
    Cooldowns,
    Deadline,
    Policy,
    retry_delay,
)


class Gauge:
    def __init__(self):
        self.value = 0

    def set(self, value):
        self.value = value

    def inc(self):
        self.value += 1

    def dec(self):
        self.value -= 1


POLICY = Policy(
    timeout=5,
    connect_timeout=1,
    first_token_timeout=4,
    idle_timeout=3,
    retries=1,
    retry_max_wait=2,
    cooldown_failures=3,
    cooldown=60,
    max_in_flight=0,
    queue_timeout=1,
)


def cooldowns(**changes):
    return Cooldowns(Board(slots=8), {"p": "127.0.0.1:9"}), dataclasses.replace(POLICY, **changes)


def test_connection_failures_cool_the_provider_after_n_in_a_row():
    c, policy = cooldowns()
    c.failure("p", "m", PROVIDER, policy, "p is unreachable")
    c.failure("p", "m", PROVIDER, policy, "p is unreachable")
    c.success("p", "m")  # the run is broken: counting starts again
    c.failure("p", "m", PROVIDER, policy, "p is unreachable")
    c.failure("p", "m", PROVIDER, policy, "p is unreachable")
    c.before_call("p", "other-model", 1)
    c.failure("p", "m", PROVIDER, policy, "p is unreachable (ConnectionError)")
    with pytest.raises(ProviderCooling) as raised:
        c.before_call("p", "other-model", 1)  # every model of the provider
    assert int(raised.value.headers["Retry-After"]) >= 59
    message = raised.value.message
    assert "provider 'p'" in message and "127.0.0.1:9" in message and "unreachable" in message
    assert raised.value.details["cooling_until"].endswith("Z")
    assert c.state("p")["reason"] == "cooldown"
    assert c.cooling_providers() == {"p"}


def test_bad_answers_cool_only_that_model():
    c, policy = cooldowns(cooldown_failures=2)
    c.failure("p", "broken", MODEL, policy, "p answered 500")
    c.failure("p", "broken", MODEL, policy, "p answered 500")
    with pytest.raises(ProviderCooling) as raised:
        c.before_call("p", "broken", 1)
    assert "model 'broken'" in raised.value.message
    c.before_call("p", "fine", 1)  # the provider's other models still go
    assert c.state("p") == {"models_cooling": {"broken": 60}}
    assert c.cooling_providers() == set()


def test_a_429_or_4xx_cools_nothing():
    c, policy = cooldowns(cooldown_failures=1)
    for _ in range(5):
        c.failure("p", "m", None, policy, "p answered 429")
    c.before_call("p", "m", 1)
    assert c.state("p") is None


def test_one_trial_after_the_cooldown_in_all_workers_then_closed_or_open_again():
    c, policy = cooldowns(cooldown_failures=1, cooldown=0.1)
    other_worker = Cooldowns(c.board, c.hosts)
    c.failure("p", "m", PROVIDER, policy, "down")
    time.sleep(0.15)
    assert c.state("p") is None  # ended: reported without waiting for a call
    c.before_call("p", "m", 5)  # the trial
    with pytest.raises(ProviderCooling):
        other_worker.before_call("p", "m", 5)  # only one at a time, in any worker
    c.failure("p", "m", PROVIDER, policy, "down")  # the trial failed: cool down again
    with pytest.raises(ProviderCooling):
        other_worker.before_call("p", "m", 5)
    time.sleep(0.15)
    other_worker.before_call("p", "m", 5)
    other_worker.success("p", "m")
    c.before_call("p", "m", 5)
    assert c.board.get("p") is None


def test_a_trial_that_never_reached_the_provider_is_released():
    c, policy = cooldowns(cooldown_failures=1, cooldown=0.05)
    c.failure("p", "m", PROVIDER, policy, "down")
    time.sleep(0.1)
    c.release(c.before_call("p", "m", 5))
    c.before_call("p", "m", 5)  # another trial may go


def test_a_full_board_stops_tracking_new_keys_and_never_raises():
    c, policy = cooldowns(cooldown_failures=1)
    for n in range(20):
        c.failure("p", f"m{n}", MODEL, policy, "500")
    assert len(c.board.entries()) == 8  # bounded, whatever the clients name
    with pytest.raises(ProviderCooling):
        c.before_call("p", "m0", 1)
    c.before_call("p", "m19", 1)  # no slot was free: not tracked, not cooled


def test_the_board_is_shared_with_forked_processes():
    board = Board(slots=8)
    pid = os.fork()
    if pid == 0:  # the child writes, as a worker would
        board.record_failure("p", 1, 60, "from the child")
        os._exit(0)
    os.waitpid(pid, 0)
    assert board.get("p").reason == "from the child"


def test_the_deadline_cuts_a_phase_short_and_names_itself():
    deadline = Deadline.after(time.monotonic(), "timeout_secs", 2.0)
    assert deadline.limit(1.0, "connect_timeout_secs") == (1.0, "connect_timeout_secs")
    seconds, name = deadline.limit(10.0, "first_token_timeout_secs")
    assert name == "timeout_secs" and 1.5 < seconds <= 2.0
    spent = Deadline.after(time.monotonic() - 5, "timeout_secs", 2.0)
    assert spent.limit(1.0, "connect_timeout_secs") == (0.0, "timeout_secs")


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


def test_a_call_waiting_for_a_bulkhead_slot_gives_up_its_set_up_slot():
    """The worker lets few calls set up at once; one that waits on max_in_flight
    costs no CPU and must not keep the others waiting (chatd.worker)."""
    said = []
    bulkhead = Bulkhead("p", limit=1, queue_timeout=0.1)
    admission.on_set_up(lambda stream: said.append(stream))
    try:
        bulkhead.acquire()  # a slot was free: still in set-up
        assert said == []
        with pytest.raises(ProviderBusy):
            bulkhead.acquire()  # waits: says so first
        assert said == [False]
    finally:
        admission.on_set_up(None)


def test_an_unlimited_bulkhead_only_counts():
    bulkhead = Bulkhead("p", limit=0, queue_timeout=0)
    for _ in range(100):
        bulkhead.acquire()
    assert bulkhead.in_flight == 100


def test_backoff_grows_with_jitter_and_is_capped():
    first = [retry_delay(0, None) for _ in range(50)]
    assert all(0.2 <= d <= 0.3 for d in first) and len(set(first)) > 1
    assert all(0.4 <= retry_delay(1, None) <= 0.6 for _ in range(20))
    # The cap holds after the jitter: never more than BACKOFF_MAX, as the README says.
    assert all(BACKOFF_MAX * 0.8 <= retry_delay(20, None) <= BACKOFF_MAX for _ in range(50))
    assert retry_delay(0, 3.0) == 3.0
