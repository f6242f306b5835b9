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


def answered_by_the_loop(
    live, first: bytes, *more: bytes, timeout: float = 5
) -> tuple[bytes, bytes]:
    """Send ``first``, then each of ``more`` while the worker still reads; read its
    answer until it closes the connection (each read within ``timeout``); return
    (head, body)."""
    with socket.create_connection(("127.0.0.1", live.port), timeout=timeout) as sock:
        sock.sendall(first)
        try:
            for data in more:
                sock.sendall(data)
        except OSError:
            pass  # closed under us: the loop answered before all of it was sent
        answer = b""
        while chunk := sock.recv(4096):  # the worker closes: no thread waits for the rest
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def test_a_body_over_the_limit_is_refused_from_the_main_loop_at_once(live):
    head, body = answered_by_the_loop(
        live, b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n{", timeout=3
    )
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


CHAT = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}).encode()
CHUNKED_HEAD = (
    b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def read_answer(sock) -> tuple[bytes, bytes]:
    """The head and the body of one answer with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


@pytest.mark.parametrize(
    "coding, start",
    [
        (b"chunked", b"3e8\r\n{"),  # a 1000-byte chunk, begun
        (b"gzip, chunked", b"3e8\r\n{"),  # gunicorn takes codings before chunked
        (b"identity, chunked", b"3e8\r\n{"),
        # Framing gunicorn's reader waits on for more (it wants CRLF), where a
        # laxer reader would call the body done and a thread would then block:
        (b"chunked", b"0\n\n"),
        (b"chunked", b"1\nx\n0\n\n"),
        (b"chunked", b"0\r\n\r\r\n"),
        (b"chunked", b"00000000000000001\r\n"),
    ],
)
@pytest.mark.parametrize(
    "line", [b"POST /chat HTTP/1.1", b"\r\nPOST /chat HTTP/1.1", b"POST /chat HTTP/1.2"]
)
def test_clients_dripping_chunked_bodies_hold_no_thread(live, coding, start, line):
    """Ten clients each part-way through a chunked body (as gunicorn's reader
    sees it), against a worker of 8 threads: had each held a thread, a whole
    call would be shed (503)."""
    head = CHUNKED_HEAD.replace(b"chunked", coding).replace(b"POST /chat HTTP/1.1", line)
    drips = []
    try:
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", live.port), timeout=5)
            sock.sendall(head + start)
            drips.append(sock)
        for _ in range(3):
            response = requests.post(live.url + "/chat", data=CHAT, timeout=5)
            assert response.status_code == 200, response.text[:300]
            assert response.json()["message"]["content"] == "from local ollama"
    finally:
        for sock in drips:
            sock.close()


def test_a_chunked_body_that_arrives_in_pieces_is_served_once_whole(live):
    pieces = [CHUNKED_HEAD + b"%x\r\n%s\r\n" % (10, CHAT[:10]), b"%x\r\n" % (len(CHAT) - 10)]
    pieces += [CHAT[10:] + b"\r\n", b"0\r\n", b"\r\n"]
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.05)
        head, body = read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert json.loads(body)["message"]["content"] == "from local ollama"
        # The connection is kept alive: the next request, chunked or not, is served.
        sock.sendall(b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(CHAT))
        sock.sendall(CHAT)
        head, body = read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200 ")


def test_a_chunked_body_over_the_limit_is_refused_from_the_main_loop(live):
    """max_request_bytes is 1,000,000 here: the 413 comes as the chunks pass it,
    and the worker closes the connection (no thread reads the rest)."""
    more = [b"x" * 65536] * 20  # 64 KiB at a time, up to ~1.3 MB: past the limit
    head, body = answered_by_the_loop(live, CHUNKED_HEAD + b"%x\r\n" % 2_000_000, *more)
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body)["error"]["type"] == "request_too_large"


def test_a_chunked_body_mostly_framing_is_bounded_by_its_raw_size(live):
    """Chunks of one byte with a 4 KB extension each: the raw bytes held are
    bounded at twice max_request_bytes (1,000,000 here), long before the
    content (or the chunk count) reaches its limit."""
    chunk = b"1;x=" + b"e" * 4000 + b"\r\nx\r\n"
    more = [chunk * 100] * 8  # ~3.2 MB raw, 800 bytes of content, 800 chunks
    head, _ = answered_by_the_loop(live, CHUNKED_HEAD, *more)
    assert head.startswith(b"HTTP/1.1 413 ")


def test_a_chunked_body_that_expects_100_continue_gets_it_once(live):
    head = CHUNKED_HEAD.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    with socket.create_connection(("127.0.0.1", live.port), timeout=5) as sock:
        sock.sendall(head)
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT))
        head, body = read_answer(sock)
    assert head.startswith(b"HTTP/1.1 200 "), head  # not a second 100
    assert json.loads(body)["message"]["content"] == "from local ollama"


def test_a_chunked_body_of_many_small_chunks_is_served(live):
    """16,000 one-byte chunks (96 KB of framing), under the 16,384-chunk limit:
    gunicorn reads the held bytes in socket-sized pieces, as from a socket."""
    body = b" " * (16_000 - len(CHAT)) + CHAT  # JSON with leading blanks
    framed = b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body)))
    with socket.create_connection(("127.0.0.1", live.port), timeout=20) as sock:
        sock.sendall(CHUNKED_HEAD + framed + b"0\r\n\r\n")
        head, answer = read_answer(sock)
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert json.loads(answer)["message"]["content"] == "from local ollama"


def test_trailers_past_the_held_limit_get_431_from_the_loop(live):
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 100) for i in range(100))  # ~10 KB
    head, _ = answered_by_the_loop(
        live, CHUNKED_HEAD + b"%x\r\n%s\r\n0\r\n" % (len(CHAT), CHAT) + trailers
    )
    assert head.startswith(b"HTTP/1.1 431 ")


def test_a_chunked_body_in_more_chunks_than_the_limit_is_refused_from_the_loop(live):
    """Each chunk costs gunicorn's reader ~2 µs: a body of 1-byte chunks is
    refused once it passes 16,384 of them, not parsed for seconds."""
    framed = b"1\r\n \r\n" * (16 * 1024 + 10)
    head, body = answered_by_the_loop(live, CHUNKED_HEAD + framed)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert "chunks" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize(
    "framing",
    [b"zz\r\n", b"5\r\nhelloXX", b"100000;a=" + b"b" * 9000 + b"\r\n"],
)
def test_a_malformed_chunked_body_is_refused_from_the_loop(live, framing):
    """Refused by the held reader, answered 400 by the loop: never handed to a
    thread whose own reads, split elsewhere, might wait on the client."""
    head, body = answered_by_the_loop(live, CHUNKED_HEAD + framing)
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert json.loads(body)["error"]["message"] == "the chunked request body is malformed"


@pytest.mark.parametrize("trailer", [b"X-Ok: 1\r\n", b"bad header\r\n", b"Content-Length: 5\r\n"])
def test_a_chunked_body_with_trailers_is_refused_from_the_loop(live, trailer):
    """gunicorn checks trailers inside the app's read of the body, where a bad
    one was a 500; chatd takes none: a 400 from the loop."""
    framed = b"%x\r\n%s\r\n0\r\n" % (len(CHAT), CHAT) + trailer + b"\r\n"
    head, body = answered_by_the_loop(live, CHUNKED_HEAD + framed)
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert "trailers" in json.loads(body)["error"]["message"]
