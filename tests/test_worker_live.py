"""The worker's main loop under clients that would stall it, live under gunicorn."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from tests.conftest import TEST_KEYS
from tests.live import clean_env, provider_urls, run_chatd, write_config


@pytest.fixture(scope="module")
def live(fakes, tmp_path_factory):
    path = write_config(
        tmp_path_factory.mktemp("worker") / "chatd.toml",
        timeout_secs=5.0,
        threads=8,
        max_request_bytes=1_000_000,
        **provider_urls(fakes),
    )
    with run_chatd(path, clean_env(**TEST_KEYS)) as chatd:
        chatd.port = int(chatd.url.rsplit(":", 1)[1])
        yield chatd


def timed_health(live) -> float:
    started = time.monotonic()
    assert requests.get(live.url + "/health", timeout=5).status_code == 200
    return time.monotonic() - started


def test_a_body_over_the_limit_is_refused_from_the_main_loop_at_once(live):
    with socket.create_connection(("127.0.0.1", live.port), timeout=3) as sock:
        sock.sendall(b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n{")
        answer = b""
        while chunk := sock.recv(4096):  # the worker closes: no thread waits for the body
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body)["error"]["type"] == "request_too_large"
    # No request was parsed for it: unlike a shed, it carries no request id (README, "Errors").
    assert b"x-request-id" not in head.lower() and "request_id" not in json.loads(body)["error"]


def test_clients_that_ask_to_close_and_never_read_stall_nothing(live):
    """gthread lingers up to 2 s closing such a connection; off the main loop here."""
    baseline = min(timed_health(live) for _ in range(3))
    idle = []
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", live.port), timeout=3)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            idle.append(sock)  # never read, never closed: the linger runs its 2 s
        time.sleep(0.2)
        slowest = max(timed_health(live) for _ in range(5))
    finally:
        for sock in idle:
            sock.close()
    assert slowest < baseline + 1.0, (baseline, slowest)
