"""Fault injection: chatd under gunicorn against upstreams that misbehave on purpose.

One worker, so the per-process cooldown state is the one the test talks to.
Each test says what the upstream did and what a client must see; retries,
fallbacks and cooldowns are checked by what the fake upstreams recorded.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from chatd.worker import LINGER_THREADS
from tests.conftest import TEST_KEYS
from tests.live import (
    clean_env,
    free_port,
    provider_urls,
    run_chatd,
    write_config,
)

MESSAGES = [{"role": "user", "content": "hi"}]
TIMEOUT = 2.0
COOLDOWN = 1.5
THREADS = 12
KEYS = {k: v for k, v in TEST_KEYS.items() if k != "OPENCODE_API_KEY"}  # opencode unregistered


@pytest.fixture(scope="module")
def live(fakes, tmp_path_factory):
    urls = provider_urls(fakes)
    urls["ollama_cloud_url"] = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused
    path = tmp_path_factory.mktemp("faults") / "chatd.toml"
    write_config(
        path,
        timeout_secs=TIMEOUT,
        first_token_timeout_secs=TIMEOUT,
        idle_timeout_secs=TIMEOUT,
        connect_timeout_secs=1.0,
        threads=THREADS,
        retries=1,
        retry_max_wait_secs=2.0,
        cooldown_failures=3,
        cooldown_secs=COOLDOWN,
        max_response_bytes=64 * 1024,
        **urls,
    )
    with open(path, "a") as f:
        f.write(
            "\n[chatd.providers.ollama]\nmax_in_flight = 2\nqueue_timeout_secs = 0.5\n"
            "first_token_timeout_secs = 1.0\n"
            "\n[chatd.providers.kimi]\ncooldown_failures = 2\n"
            '\n[chatd.aliases]\nfast = ["opencode/unregistered", "openrouter/meta/llama"]\n'
        )
    with run_chatd(path, clean_env(**KEYS), workers=1) as chatd:
        yield chatd


def post(live, model, timeout=15, **extra):
    return requests.post(
        live.url + "/chat", json={"model": model, "messages": MESSAGES, **extra}, timeout=timeout
    )


def calls(fake) -> int:
    return len(fake.chat_requests())


def test_refused_connection_is_502_after_one_retry(live):
    response = post(live, "glm:cloud")
    assert response.status_code == 502
    assert "unreachable" in response.json()["error"]["message"]
    assert "retry 1/1 of ollama_cloud/glm" in live.log_text()


def test_503_is_retried_and_then_served(live, fakes):
    fake = fakes["openrouter"]
    before = calls(fake)
    fake.behave("status", status=503, body={"error": {"message": "overloaded"}}, times=1)
    response = post(live, "openrouter/a/b")
    assert response.status_code == 200
    assert calls(fake) - before == 2


def test_429_retry_after_is_honoured(live, fakes):
    fake = fakes["openrouter"]
    before = calls(fake)
    fake.behave("status", status=429, body={}, headers={"Retry-After": "1"}, times=1)
    started = time.monotonic()
    response = post(live, "openrouter/a/b")
    assert response.status_code == 200
    assert time.monotonic() - started >= 1.0
    assert calls(fake) - before == 2


@pytest.mark.parametrize(
    "status, body",
    [
        (429, {"error": "you have reached your session usage limit, upgrade for higher limits"}),
        (400, {"error": "invalid request"}),
        (401, {"error": "unauthorized"}),
        (404, {"error": "model 'x' not found"}),
    ],
)
def test_not_retried(live, fakes, status, body):
    fake = fakes["openrouter"]
    before = calls(fake)
    fake.behave("status", status=status, body=body)
    response = post(live, "openrouter/a/b")
    assert response.status_code == (429 if status == 429 else 502)
    assert response.headers["x-should-retry"] == "false"
    assert calls(fake) - before == 1


def test_5xx_cools_the_model_fails_fast_then_a_trial_closes_it(live, fakes):
    fake = fakes["kimi"]
    fake.behave("status", status=502, body={"error": {"message": "bad gateway"}})
    # cooldown_failures = 2 for kimi: one call and its retry cool the model down.
    assert post(live, "kimi/k").status_code == 502
    before = calls(fake)
    response = post(live, "kimi/k")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "provider_disabled"
    assert error["cooling"] == "model"
    assert "bad gateway" in error["message"] and "model 'k'" in error["message"]
    assert int(response.headers["Retry-After"]) >= 1
    assert calls(fake) == before  # failed fast: the upstream never saw it
    status = requests.get(live.url + "/chat/providers", timeout=5).json()
    assert status["providers"]["kimi"] is True  # its other models still go
    assert set(status["status"]["kimi"]["models_cooling"]) == {"k"}

    fake.behave("ok")
    assert post(live, "kimi/other").status_code == 200
    time.sleep(COOLDOWN + 0.2)
    assert post(live, "kimi/k").status_code == 200  # the trial
    assert (
        "models_cooling"
        not in requests.get(live.url + "/chat/providers", timeout=5).json()["status"]["kimi"]
    )


def test_fallback_serves_and_says_what_was_tried(live, fakes):
    fakes["ollama"].behave("status", status=503, body={"error": "busy"})
    response = post(live, "ollama/llama3.2", fallbacks=["opencode/x", "openrouter/meta/llama"])
    assert response.status_code == 200
    assert response.json()["provider"] == "openrouter"
    assert response.json()["model"] == "meta/llama"
    assert response.headers["X-Chatd-Fallbacks"] == (
        "ollama/llama3.2, opencode/x, openrouter/meta/llama"
    )


def test_rejected_request_does_not_fall_back(live, fakes):
    fakes["ollama"].behave("status", status=400, body={"error": "bad options"})
    before = calls(fakes["openrouter"])
    response = post(live, "ollama/llama3.2", fallbacks=["openrouter/meta/llama"])
    assert response.status_code == 502
    assert calls(fakes["openrouter"]) == before


def test_alias_tries_its_list_in_order(live):
    response = post(live, "fast")
    assert response.status_code == 200
    assert response.json()["provider"] == "openrouter"
    assert response.headers["X-Chatd-Fallbacks"] == "opencode/unregistered, openrouter/meta/llama"


def test_every_fallback_failing_returns_the_last_error(live, fakes):
    fakes["openrouter"].behave("status", status=404, body={"error": {"message": "no such model"}})
    response = post(live, "opencode/x", fallbacks=["openrouter/a/b"])
    assert response.status_code == 502
    assert "no such model" in response.json()["error"]["message"]
    assert response.headers["X-Chatd-Fallbacks"] == "opencode/x, openrouter/a/b"


def test_slow_model_load_hits_the_first_token_timeout(live, fakes):
    fakes["ollama"].behave("hang", delay=4)
    started = time.monotonic()
    response = post(live, "llama3.2")
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["timeout"] == "first_token_timeout_secs"
    assert 0.9 <= elapsed < 2.5


def test_answer_past_the_cap_is_502(live, fakes):
    fakes["openrouter"].behave("big", size=200 * 1024)
    response = post(live, "openrouter/a/b")
    assert response.status_code == 502
    assert "max_response_bytes" in response.json()["error"]["message"]


def test_invalid_json_is_502(live, fakes):
    fakes["openrouter"].behave("invalid_json")
    response = post(live, "openrouter/a/b")
    assert response.status_code == 502
    assert "invalid JSON" in response.json()["error"]["message"]


def test_over_max_in_flight_waits_then_503_and_health_stays_prompt(live, fakes):
    fakes["ollama"].behave("hang", delay=1.5)
    with ThreadPoolExecutor(4) as pool:
        started = time.monotonic()
        futures = [pool.submit(post, live, "llama3.2") for _ in range(4)]
        time.sleep(0.2)
        health_started = time.monotonic()
        assert requests.get(live.url + "/health", timeout=2).status_code == 200
        assert time.monotonic() - health_started < 1.0
        responses = [f.result() for f in futures]
    statuses = Counter(r.status_code for r in responses)
    # Two slots: two calls hit the 1 s first-token timeout, two waited 0.5 s and were shed.
    assert statuses == {504: 2, 503: 2}, statuses
    shed = [r for r in responses if r.status_code == 503]
    assert all(r.json()["error"]["type"] == "provider_busy" for r in shed)
    assert all(r.headers["Retry-After"] == "1" for r in shed)
    assert time.monotonic() - started < 4


def worker_pid(live) -> int:
    pid = live.process.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = f.read().split()
    assert len(children) == 1
    return int(children[0])


def counts(pid: int) -> tuple[int, int]:
    """Open fds, and threads other than the two bounded pools' (started lazily)."""
    tasks = os.listdir(f"/proc/{pid}/task")
    pools = pool_threads(pid) + pool_threads(pid, "chatd-linger")
    return len(os.listdir(f"/proc/{pid}/fd")), len(tasks) - pools


def pool_threads(pid: int, name: str = "chatd-request") -> int:
    """Threads of one of chatd.worker's pools (it names them in the OS): the request
    threads by default, or the lingering closes' (``chatd-linger``)."""
    names = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                names.append(f.read())
        except OSError:
            pass  # it ended meanwhile
    return sum(comm.strip() == name for comm in names)


def test_concurrent_faults_give_expected_statuses_and_leak_nothing(live, fakes):
    pid = worker_pid(live)
    fakes["openrouter"].behave("ok")
    fakes["kimi"].behave("reset")
    fakes["ollama"].behave("hang", delay=0.3)
    models = ["openrouter/a/b", "kimi/k", "llama3.2", "glm:cloud", "opencode/x", "fast"]
    expected = {200, 429, 502, 503, 504, 404}

    def load(n: int):
        with ThreadPoolExecutor(16) as pool:
            return list(
                pool.map(lambda i: post(live, models[i % len(models)], timeout=20), range(n))
            )

    # gunicorn starts its threads lazily, up to `threads`: fill the pool first.
    load(48)
    fds_before, threads_before = counts(pid)
    health_times = []
    stop = threading.Event()

    def watch_health():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            requests.get(live.url + "/health", timeout=5)
            health_times.append(time.monotonic() - started)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    try:
        responses = load(300)
    finally:
        stop.set()
        watcher.join(10)
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= expected, statuses
    assert statuses[500] == 0
    assert statuses[200] > 0
    assert health_times and max(health_times) < 1.0

    for fake in fakes.values():
        fake.behave("ok")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        fds, threads = counts(pid)
        if fds <= fds_before and threads <= threads_before:
            break
        time.sleep(0.2)
    # Pooled keep-alive connections may outnumber the warm-up's, up to the load's
    # 16 at once (the pools keep what they opened); a leak would be per call,
    # hundreds over these 300.
    assert fds <= fds_before + 16, (fds_before, fds)
    assert threads <= threads_before, (threads_before, threads)
    # The pool may have grown (it starts threads as calls need them), never past
    # `threads`; the head watchdog, started from a request thread, has its OS name too.
    assert pool_threads(pid) <= THREADS + 1
    assert pool_threads(pid, "chatd-linger") <= LINGER_THREADS
