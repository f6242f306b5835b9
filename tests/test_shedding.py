"""Shedding, for real: more streams than chatd has threads get 503 + Retry-After at
once, while the streams it admitted finish intact (issue 12).

gunicorn with one worker of 8 threads (6 for calls, 2 kept for /health) in
front of a fake Ollama Cloud streaming 5 pieces 0.3 s apart; 20 streams opened
at once. Bounded: every call has a 15 s timeout, the pool 20 threads.
"""

from __future__ import annotations

import concurrent.futures
import socket
import time

import pytest
import requests

from tests.conftest import TEST_KEYS
from tests.fakes import FakeOllama
from tests.live import clean_env, run_chatd, write_config

THREADS = 8
CALL_SLOTS = THREADS - 2  # chatd.admission.RESERVED_THREADS
STREAMS = 20
PIECES = ["a", "b", "c", "d", "e"]
INTERVAL = 0.3


@pytest.fixture(scope="module")
def upstream():
    with FakeOllama("from ollama cloud") as fake:
        fake.behave("ok", pieces=PIECES, interval=INTERVAL)
        yield fake


@pytest.fixture(scope="module")
def live(upstream, tmp_path_factory):
    config = write_config(
        tmp_path_factory.mktemp("shed") / "chatd.toml",
        threads=THREADS,
        ollama_cloud_url=upstream.url,
    )
    with run_chatd(config, clean_env(**TEST_KEYS), workers=1) as chatd:
        yield chatd


def stream(url: str) -> dict:
    body = {"model": "llama3.2:cloud", "messages": [{"role": "user", "content": "hi"}]}
    with requests.post(url + "/chat", json={**body, "stream": True}, stream=True, timeout=15) as r:
        return {"status": r.status_code, "headers": dict(r.headers), "text": r.text}


def shed_without_body(url: str) -> bytes:
    """Send a request head announcing a body that never comes; return the answer.

    Shed at the door, it is answered at once; a thread reading it would wait."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(
            b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Request-ID: shed-at-the-head-1\r\nContent-Length: 100000\r\n\r\n"
        )
        answer = b""
        while len(answer) < 10_000:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    return answer


def test_streams_past_the_threads_are_shed_and_the_admitted_ones_finish_intact(live, upstream):
    with concurrent.futures.ThreadPoolExecutor(STREAMS) as pool:
        calls = [pool.submit(stream, live.url) for _ in range(STREAMS)]
        # While the admitted streams run, /health still answers, and fast.
        time.sleep(INTERVAL)
        started = time.monotonic()
        health = requests.get(live.url + "/health", timeout=5)
        health_secs = time.monotonic() - started
        held_body = shed_without_body(live.url)
        results = [call.result(timeout=30) for call in calls]

    served = [r for r in results if r["status"] == 200]
    shed = [r for r in results if r["status"] != 200]
    assert health.status_code == 200 and health_secs < 1.0
    assert held_body.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1\r\n" in held_body
    # The client's request id, read from the head the loop holds, comes back.
    assert b"\r\nX-Request-ID: shed-at-the-head-1\r\n" in held_body
    assert b'"request_id":"shed-at-the-head-1"' in held_body.replace(b" ", b"")
    assert 1 <= len(served) <= CALL_SLOTS
    assert len(shed) >= STREAMS - CALL_SLOTS
    for r in shed:
        headers = {name.lower(): value for name, value in r["headers"].items()}
        assert r["status"] == 503, r
        assert headers.get("retry-after") == "1", r
        assert '"type":"overloaded"' in r["text"].replace(" ", ""), r
        request_id = headers.get("x-request-id")
        assert request_id and f'"request_id":"{request_id}"' in r["text"].replace(" ", ""), r
    for r in served:
        contents = [
            part.split('"content":"', 1)[1].split('"', 1)[0]
            for part in r["text"].split("\n\n")
            if '"content":"' in part
        ]
        assert "".join(contents) == "".join(PIECES)
        assert r["text"].endswith("data: [DONE]\n\n")
        assert "event: error" not in r["text"]
    # The shed calls never reached the upstream.
    assert len(upstream.chat_requests()) == len(served)


def test_after_the_burst_chatd_serves_again(live):
    deadline = time.monotonic() + 10
    while True:
        result = stream(live.url)
        if result["status"] == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert result["status"] == 200
    assert result["text"].endswith("data: [DONE]\n\n")


def test_the_sheds_are_counted_in_metrics_by_why(live):
    """The burst above was shed at the door, before the app: /metrics still says so."""
    text = requests.get(live.url + "/metrics", timeout=5).text
    counted = {
        line.split('why="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("chatd_shed_total{")
    }
    # Each shed stream, and the held body (most for want of a thread; a loaded
    # machine may shed some as saturated instead).
    assert sum(counted.values()) >= STREAMS - CALL_SLOTS + 1
    assert set(counted) <= {"no_thread", "saturated", "set_up_wait", "descriptors"}
