"""chatd.relay: open streams carried on by one event loop per worker.

First the Relay alone, over socket pairs (a fake upstream socket, a fake client
socket), then chatd under gunicorn, where a stream's set-up runs on a request
thread and the rest on the relay. Every wait is bounded; every server started
here is stopped here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from chatd import relay as relay_module
from chatd.relay import Relay
from chatd.worker import RELAY_MAX_LAG
from tests.conftest import TEST_KEYS
from tests.fakes import FakeOllama
from tests.live import clean_env, run_chatd, wait_for, write_config

WAIT = 10.0  # seconds any one wait below may take, at most


class Ended:
    """What a relayed stream's ``done`` was called with, once."""

    def __init__(self):
        self.whole: list[bool] = []
        self.event = threading.Event()

    def __call__(self, whole: bool) -> None:
        self.whole.append(whole)
        self.event.set()


def upstream_body(sock: socket.socket, until_secs: float, log: list):
    """A stream body that relays what ``sock`` sends, a piece per recv, until EOF."""
    try:
        while True:
            data = relay_module.current().recv(sock, 4096, time.monotonic() + until_secs)
            if data is None:
                log.append("timeout")
                yield b"timed out"
                return
            if not data:
                log.append("eof")
                return
            yield data
    finally:
        log.append("closed")
        sock.close()


@pytest.fixture
def relay():
    return Relay().start(name="test-relay")


@pytest.fixture
def pairs():
    made = []

    def pair():
        a, b = socket.socketpair()
        made.extend((a, b))
        return a, b

    yield pair
    for sock in made:
        sock.close()


def read_until(sock: socket.socket, marker: bytes, timeout: float = WAIT) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return data


def test_pieces_go_out_chunked_as_the_upstream_sends_them(relay, pairs):
    upstream_here, upstream_there = pairs()
    client_here, client_there = pairs()
    log, ended = [], Ended()
    relay.add(client_here, upstream_body(upstream_here, 5, log), True, ended)
    upstream_there.sendall(b"one")
    assert read_until(client_there, b"one\r\n") == b"3\r\none\r\n"
    upstream_there.sendall(b"second")
    assert read_until(client_there, b"second\r\n") == b"6\r\nsecond\r\n"
    upstream_there.close()
    assert ended.event.wait(WAIT)
    assert read_until(client_there, b"0\r\n\r\n") == b"0\r\n\r\n"
    assert ended.whole == [True] and log == ["eof", "closed"]
    assert relay.open == 0


def test_a_silent_upstream_times_out_at_its_deadline_not_before(relay, pairs):
    upstream_here, _ = pairs()
    client_here, client_there = pairs()
    log, ended = [], Ended()
    started = time.monotonic()
    relay.add(client_here, upstream_body(upstream_here, 0.4, log), False, ended)
    assert ended.event.wait(WAIT)
    took = time.monotonic() - started
    assert 0.35 <= took < 3.0
    assert log == ["timeout", "closed"]
    assert read_until(client_there, b"timed out") == b"timed out"


def test_many_streams_interleave_on_one_thread(relay, pairs):
    streams = []
    for _ in range(50):
        upstream_here, upstream_there = pairs()
        client_here, client_there = pairs()
        ended = Ended()
        relay.add(client_here, upstream_body(upstream_here, 5, []), False, ended)
        streams.append((upstream_there, client_there, ended))
    for round_ in range(3):
        for i, (upstream_there, _, _) in enumerate(streams):
            upstream_there.sendall(b"<%d.%d>" % (i, round_))
        for i, (_, client_there, _) in enumerate(streams):
            assert read_until(client_there, b"<%d.%d>" % (i, round_)).endswith(
                b"<%d.%d>" % (i, round_)
            )
    for upstream_there, _, ended in streams:
        upstream_there.close()
        assert ended.event.wait(WAIT)
    assert wait_for(lambda: relay.open == 0, WAIT, "every stream to end", every=0.02)
    assert relay.timers == [] or all(not t[2].waiting for t in relay.timers)


def test_a_client_that_left_ends_the_stream_and_closes_the_upstream(relay, pairs):
    upstream_here, upstream_there = pairs()
    client_here, client_there = pairs()
    log, ended = [], Ended()
    relay.add(client_here, upstream_body(upstream_here, 5, log), True, ended)
    client_there.close()
    # The next piece finds the client gone: the upstream is closed, not read on.
    upstream_there.sendall(b"piece")
    assert ended.event.wait(WAIT)
    assert ended.whole == [False] and log == ["closed"]
    upstream_there.settimeout(WAIT)
    assert upstream_there.recv(10) == b""  # chatd hung up on the upstream


def test_a_client_that_reads_nothing_is_let_go_at_the_stall_limit(relay, pairs, monkeypatch):
    monkeypatch.setattr(relay_module, "CLIENT_STALL_SECS", 0.5)
    upstream_here, upstream_there = pairs()
    client_here, _client_there = pairs()  # never read
    client_here.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    log, ended = [], Ended()
    relay.add(client_here, upstream_body(upstream_here, 30, log), True, ended)
    started = time.monotonic()
    sent = 0
    upstream_there.settimeout(0.05)
    while not ended.event.is_set() and sent < (64 << 20) and time.monotonic() - started < WAIT:
        try:
            sent += upstream_there.send(b"x" * 65536)
        except (TimeoutError, BlockingIOError):
            pass
        except OSError:
            break  # chatd hung up on the upstream
    assert ended.event.wait(WAIT)
    assert ended.whole == [False] and "closed" in log


def test_a_client_that_reads_slowly_but_steadily_is_not_let_go(relay, pairs, monkeypatch):
    """The stall limit counts from the client's last progress, not from the
    start of a write: a big piece read a little at a time still goes through."""
    monkeypatch.setattr(relay_module, "CLIENT_STALL_SECS", 0.5)
    client_here, client_there = pairs()
    client_here.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ended = Ended()
    big = b"y" * (1 << 20)
    relay.add(client_here, iter([big]), False, ended)
    client_there.settimeout(WAIT)
    received, started = 0, time.monotonic()
    while received < len(big) and time.monotonic() - started < 30:
        received += len(client_there.recv(64 * 1024))
        time.sleep(0.2)  # slower than the whole piece could go, faster than the limit
    assert received == len(big)
    assert ended.event.wait(WAIT) and ended.whole == [True]
    assert time.monotonic() - started > 0.5  # longer than the limit, in all


class CountingSocket:
    """A socket whose sends are recorded."""

    def __init__(self, sock):
        self.sock = sock
        self.sent: list[bytes] = []

    def send(self, data):
        n = self.sock.send(data)
        self.sent.append(bytes(data[:n]))
        return n

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_pieces_that_arrived_together_leave_in_one_write(relay, pairs):
    upstream_here, upstream_there = pairs()
    client_here, client_there = pairs()
    counting = CountingSocket(client_here)

    def body():
        for data in upstream_body(upstream_here, 5, []):
            yield from data.split(b"|")  # one read, several pieces

    ended = Ended()
    relay.add(counting, body(), False, ended)
    upstream_there.sendall(b"one|two|three")
    assert read_until(client_there, b"three") == b"onetwothree"
    upstream_there.close()
    assert ended.event.wait(WAIT)
    assert counting.sent[0] == b"onetwothree"


def test_the_relay_measures_how_late_it_runs(relay, pairs):
    def hog():
        time.sleep(0.4)  # the relay's thread, held: every stream would wait
        yield b"done"

    client_here, client_there = pairs()
    ended = Ended()
    relay.add(client_here, hog(), False, ended)
    assert ended.event.wait(WAIT)
    assert relay.lag > RELAY_MAX_LAG
    wait_for(lambda: relay.lag < RELAY_MAX_LAG / 5, WAIT, "the lag to fall back", every=0.02)


def test_a_failing_body_ends_the_stream_without_taking_the_relay_down(relay, pairs):
    def broken():
        yield b"first"
        raise RuntimeError("a bug")

    client_here, client_there = pairs()
    ended = Ended()
    relay.add(client_here, broken(), False, ended)
    assert ended.event.wait(WAIT) and ended.whole == [False]
    # The relay still serves the next stream.
    upstream_here, upstream_there = pairs()
    client2_here, client2_there = pairs()
    ended2 = Ended()
    relay.add(client2_here, upstream_body(upstream_here, 5, []), False, ended2)
    upstream_there.sendall(b"still here")
    assert read_until(client2_there, b"still here") == b"still here"
    upstream_there.close()
    assert ended2.event.wait(WAIT)


def thread_cpu_seconds(thread: threading.Thread) -> float:
    fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_client_gone_while_its_stream_waits_on_the_upstream_costs_no_cpu(relay, pairs):
    """The client's socket was watched for writing once (a big piece), then the
    client hangs up while the stream waits for its upstream: epoll reports the
    hang-up whatever it is asked for, and the relay must not spin on it."""
    upstream_here, upstream_there = pairs()
    client_here, client_there = pairs()
    client_here.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ended = Ended()
    relay.add(client_here, upstream_body(upstream_here, 30, []), False, ended)
    big = b"x" * (1 << 20)
    sender = threading.Thread(target=upstream_there.sendall, args=(big,), daemon=True)
    sender.start()  # the relay passes it on only as fast as the client reads
    client_there.settimeout(WAIT)
    received = 0
    while received < len(big):
        received += len(client_there.recv(1 << 20))
    sender.join(WAIT)
    client_there.close()  # hangs up while the stream waits on its upstream
    time.sleep(0.1)
    before = thread_cpu_seconds(relay.thread)
    time.sleep(1.0)
    assert thread_cpu_seconds(relay.thread) - before < 0.3
    upstream_there.close()
    assert ended.event.wait(WAIT)


def test_a_relay_that_fails_says_so_and_stops_its_worker(relay):
    died = threading.Event()
    relay.on_death = died.set
    relay.incoming.append(("not", "a stream"))  # a bug in the relay itself
    os.write(relay._wake_write, b"\0")
    assert died.wait(WAIT)
    assert relay.dead


# -- under gunicorn ------------------------------------------------------------------

PIECES = ["a", "b", "c", "d", "e"]
INTERVAL = 0.2
BODY = {"model": "llama3.2:cloud", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture(scope="module")
def upstream():
    with FakeOllama("from ollama cloud") as fake:
        yield fake


@pytest.fixture(scope="module")
def live(upstream, tmp_path_factory):
    config = write_config(
        tmp_path_factory.mktemp("relay") / "chatd.toml",
        ollama_cloud_url=upstream.url,
        idle_timeout_secs=1.5,
        first_token_timeout_secs=7,
        graceful_timeout_secs=20,
    )
    with run_chatd(config, clean_env(**TEST_KEYS), workers=1) as chatd:
        yield chatd


@pytest.fixture
def paced(upstream):
    upstream.behave("ok", pieces=PIECES, interval=INTERVAL)
    yield upstream
    upstream.behave()


def worker_pid(live) -> int:
    out = subprocess.run(
        ["pgrep", "-P", str(live.process.pid)], capture_output=True, text=True, timeout=5
    ).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def request_threads(pid: int) -> int:
    count = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            if Path(f"/proc/{pid}/task/{task}/comm").read_text().strip() == "chatd-request":
                count += 1
        except OSError:
            pass  # the thread ended meanwhile
    return count


def contents(text: str) -> str:
    return "".join(
        part.split('"content":"', 1)[1].split('"', 1)[0]
        for part in text.split("\n\n")
        if '"content":"' in part
    )


def open_chat(live, version: bytes = b"HTTP/1.1") -> socket.socket:
    """A raw connection to chatd that has sent one streaming /chat request."""
    port = int(live.url.rsplit(":", 1)[1])
    body = requests.models.complexjson.dumps(BODY).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(
        b"POST /chat %s\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (version, len(body), body)
    )
    return sock


def test_open_streams_hold_no_request_thread(live, paced):
    """Twelve streams open at once; the worker's request threads are far fewer
    (a thread per stream would be twelve)."""
    opened = []
    try:
        for _ in range(12):
            response = requests.post(live.url + "/chat", json=BODY, stream=True, timeout=WAIT)
            lines = response.iter_lines()
            first = next(lines)
            assert first.startswith(b"data: ")
            opened.append((response, [first], lines))
        assert request_threads(worker_pid(live)) <= 3
        for _, got, lines in opened:
            got.extend(lines)
            text = b"\n".join(got).decode()
            assert contents(text) == "".join(PIECES)
            assert text.rstrip().endswith("data: [DONE]")
    finally:
        for response, _, _ in opened:
            response.close()


def test_a_connection_is_kept_alive_after_a_relayed_stream(live, paced):
    with open_chat(live) as sock:
        answer = read_until(sock, b"\r\n0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in answer
        assert b"data: [DONE]" in answer and answer.endswith(b"\r\n0\r\n\r\n")
        # The same connection takes the next request.
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 200 ")


def test_an_http10_client_gets_the_stream_unframed_then_the_close(live, paced):
    with open_chat(live, b"HTTP/1.0") as sock:
        answer = read_until(sock, b"never sent")  # to the server's close
    head, _, text = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ") and b"chunked" not in head.lower()
    assert text.startswith(b"data: ") and text.endswith(b"data: [DONE]\n\n")
    assert contents(text.decode()) == "".join(PIECES)


def test_a_client_that_leaves_mid_stream_hangs_up_on_the_upstream(live, upstream):
    upstream.behave("ok", pieces=[str(i) for i in range(30)], interval=0.2)
    try:
        hangups = upstream.hangups
        with open_chat(live) as sock:
            assert b"data: " in read_until(sock, b"data: ")
        wait_for(
            lambda: upstream.hangups > hangups, WAIT, "the upstream to be hung up on", every=0.02
        )
        wait_for(
            lambda: "stream=client_gone" in live.log_text(), WAIT, "the access line", every=0.02
        )
    finally:
        upstream.behave()


@pytest.mark.parametrize("failure", ["cut_after", "error_after"])
def test_an_upstream_failing_mid_stream_ends_the_relayed_stream_with_an_error_event(
    live, upstream, failure
):
    upstream.behave("ok", pieces=["a", "b", "c"], interval=0.2, **{failure: 1})
    try:
        response = requests.post(live.url + "/chat", json=BODY, timeout=WAIT)
    finally:
        upstream.behave()
    assert response.status_code == 200
    assert response.text.startswith("data: ")  # the first piece went out
    assert "event: error" in response.text and "upstream_error" in response.text
    assert "data: [DONE]" not in response.text


def test_a_stalled_upstream_ends_the_relayed_stream_at_idle_timeout(live, upstream):
    upstream.behave("ok", pieces=["a", "b", "c"], stall_after=1, stall=8)
    try:
        started = time.monotonic()
        response = requests.post(live.url + "/chat", json=BODY, timeout=WAIT)
        took = time.monotonic() - started
    finally:
        upstream.behave()
    assert response.status_code == 200
    assert "event: error" in response.text and "idle_timeout_secs (1.5 s)" in response.text
    assert "data: [DONE]" not in response.text
    assert 1.4 <= took < 5.0


def test_a_stopping_worker_lets_relayed_streams_finish(upstream, tmp_path):
    upstream.behave("ok", pieces=PIECES, interval=0.3)
    config = write_config(
        tmp_path / "chatd.toml", ollama_cloud_url=upstream.url, graceful_timeout_secs=20
    )
    try:
        with run_chatd(config, clean_env(**TEST_KEYS), workers=1) as chatd:
            response = requests.post(chatd.url + "/chat", json=BODY, stream=True, timeout=WAIT)
            lines = response.iter_lines()
            got = [next(lines)]
            chatd.process.send_signal(signal.SIGTERM)
            got.extend(lines)
            text = b"\n".join(got).decode()
            assert contents(text) == "".join(PIECES)
            assert text.rstrip().endswith("data: [DONE]")
            chatd.process.wait(timeout=WAIT)
    finally:
        upstream.behave()
