"""chatd.worker's door, without gunicorn running: which connection starts, waits
or is shed (issue 12). The live counterpart is tests/test_shedding.py."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.workers.gthread import ThreadWorker

from chatd import worker as chatd_worker
from chatd.worker import MAX_SETUP_WAIT, MAX_SETUPS, SENT_GRACE, SheddingMixin

# The door alone: in ChatdWorker, WholeRequests holds a connection until its
# request is whole before it reaches the door (tests/test_hostile.py, live).


class Door(SheddingMixin, ThreadWorker):
    pass


THREADS = 12


class Pressure:
    reason: str | None = None


OPEN: list[socket.socket] = []


class Conn:
    """A connection as gthread holds it: a socket (ours: one end of a pair)."""

    def __init__(self, request: bytes = b"POST /chat HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"):
        self.sock, self.client = socket.socketpair()
        OPEN.extend((self.sock, self.client))
        if request:
            self.client.sendall(request)
        self.client.settimeout(2)

    def close(self):
        self.sock.close()

    def answer(self) -> bytes:
        return self.client.recv(65536)


@pytest.fixture
def door(monkeypatch):
    started = []
    monkeypatch.setattr(ThreadWorker, "enqueue_req", lambda self, conn: started.append(conn))
    w = Door.__new__(Door)
    w.cfg = SimpleNamespace(threads=THREADS, keepalive=2)
    w.alive = True
    w.busy = 0
    w.in_setup = {}
    w.waiting = chatd_worker.deque()
    w._setup_lock = threading.Lock()
    w.pressure = Pressure()
    w.shed = 0
    w._shed_logged = 0.0
    w.nr_conns = 100
    w.pending_conns = chatd_worker.deque()
    deferred = []
    w.method_queue = SimpleNamespace(defer=lambda f, *a: deferred.append((f, a)))
    w.started, w.deferred = started, deferred
    yield w
    while OPEN:
        OPEN.pop().close()


def test_calls_start_while_set_up_slots_are_free_and_the_next_wait_in_order(door):
    conns = [Conn() for _ in range(MAX_SETUPS + 2)]
    for conn in conns:
        door.enqueue_req(conn)
    assert door.started == conns[:MAX_SETUPS]
    assert [c for c, _ in door.waiting] == conns[MAX_SETUPS:]
    # One set-up ends: the main loop is woken and the first waiting call starts.
    door._set_up_done(conns[0])
    ((wake, args),) = door.deferred
    wake(*args)
    assert door.started == conns[: MAX_SETUPS + 1]
    assert [c for c, _ in door.waiting] == conns[MAX_SETUPS + 1 :]


def test_a_slot_frees_soon_after_its_upstream_call_went_out(door, monkeypatch):
    conns = [Conn() for _ in range(MAX_SETUPS + 1)]
    for conn in conns:
        door.enqueue_req(conn)
    door._sent(conns[0], stream=True)
    now = chatd_worker.time.monotonic()
    door._start_waiting()
    assert conns[-1] not in door.started  # within SENT_GRACE: still its slot
    monkeypatch.setattr(chatd_worker.time, "monotonic", lambda: now + SENT_GRACE * 2)
    door._start_waiting()
    assert door.started[-1] is conns[-1]


def test_a_call_that_waited_too_long_is_shed_with_503(door, monkeypatch):
    conns = [Conn() for _ in range(MAX_SETUPS + 1)]
    for conn in conns:
        door.enqueue_req(conn)
    later = chatd_worker.time.monotonic() + MAX_SETUP_WAIT + 0.1
    monkeypatch.setattr(chatd_worker.time, "monotonic", lambda: later)
    monkeypatch.setattr(ThreadWorker, "murder_pending", lambda self: None)  # gthread's own
    door.murder_pending()
    answer = conns[-1].answer()
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nRetry-After: 1\r\n" in answer
    assert b"CPU saturated" in answer
    assert not door.waiting


@pytest.mark.parametrize(
    "kept", ["GET /health", "HEAD /health", "GET /metrics", "GET /chat/providers", "GET /providers"]
)
def test_with_every_call_thread_busy_calls_are_shed_but_the_kept_routes_are_served(door, kept):
    door.busy = THREADS - 2  # chatd.admission.RESERVED_THREADS kept for these
    call, health = Conn(), Conn(kept.encode() + b" HTTP/1.1\r\n\r\n")
    door.enqueue_req(call)
    door.enqueue_req(health)
    answer = call.answer()
    assert answer.startswith(b"HTTP/1.1 503 ") and b"call slots" in answer
    assert door.started == [health]


@pytest.mark.parametrize(
    "request_line, envelope",
    [
        (b"POST /chat HTTP/1.1", {"type": "overloaded"}),
        (b"POST /api/chat HTTP/1.1", None),
        (b"POST /v1/messages HTTP/1.1", {"type": "overloaded_error"}),
    ],
)
def test_a_shed_answer_comes_in_the_envelope_its_client_reads(door, request_line, envelope):
    import json

    door.busy = THREADS - 2
    call = Conn(request_line + b"\r\nContent-Length: 2\r\n\r\n{}")
    door.enqueue_req(call)
    body = json.loads(call.answer().split(b"\r\n\r\n", 1)[1])
    if envelope is None:  # Ollama's clients read {"error": "<text>"}
        assert isinstance(body["error"], str) and "call slots" in body["error"]
    else:
        assert body["error"]["type"] == envelope["type"]


@pytest.mark.parametrize(
    "given, echoed",
    [
        (b"X-Request-ID: trace-7f3a\r\n", True),
        (b"x-request-id:trace-7f3a\r\n", True),
        (b"X-Request-ID: two words\r\n", False),  # not safe to echo: a new one
        (b"X-Request-ID: a\r\nX-Request-ID: b\r\n", False),  # gunicorn joins them: refused
        (b"Foo: bar\nX-Request-ID: trace-7f3a\r\n", False),  # a bare LF: no line of its own
        (b"X-Request-ID: trace-7f3a\r\n folded\r\n", False),
        (b"X-Request-ID-Extra: trace-7f3a\r\n", False),
        (b"", False),
    ],
)
@pytest.mark.parametrize("path", [b"/chat", b"/v1/messages", b"/api/chat"])
def test_a_shed_answer_carries_a_request_id_the_clients_when_it_is_safe(given, echoed, path):
    import json
    import re

    head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + given + b"Content-Length: 2\r\n\r\n"
    answer = chatd_worker.shed_answer(
        "all 2 call slots are taken",
        head[: chatd_worker.PEEK_BYTES],
        chatd_worker.client_request_id(head),
    )
    request_id = re.search(rb"\r\nX-Request-ID: ([^\r]*)\r\n", answer)[1].decode()
    if echoed:
        assert request_id == "trace-7f3a"
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    if path == b"/chat":
        assert body["error"]["request_id"] == request_id
    elif path == b"/v1/messages":
        assert body["request_id"] == request_id
    else:  # Ollama's envelope has room for the text only; the header carries the id
        assert body == {"error": "all 2 call slots are taken"}


def test_a_newcomer_waits_behind_those_already_waiting(door):
    conns = [Conn() for _ in range(MAX_SETUPS + 1)]
    for conn in conns:
        door.enqueue_req(conn)
    assert [c for c, _ in door.waiting] == conns[MAX_SETUPS:]
    # A slot frees, but before the main loop starts the waiting call a new one arrives.
    door._set_up_done(conns[0])
    late = Conn()
    door.enqueue_req(late)
    assert [c for c, _ in door.waiting] == [conns[MAX_SETUPS], late]


def test_while_the_cpu_is_saturated_new_calls_are_shed_at_once(door):
    door.busy = 1
    door.pressure.reason = "CPU saturated (scheduling lag 80 ms)"
    conn = Conn()
    door.enqueue_req(conn)
    answer = conn.answer()
    assert answer.startswith(b"HTTP/1.1 503 ") and b"scheduling lag 80 ms" in answer
    assert door.started == []


def test_streams_on_the_relay_count_as_calls_at_the_door(door):
    """A relayed stream holds no thread, but it is a call this worker carries:
    with the threads' calls and the relay's streams at capacity, the next is shed."""
    door.relay = SimpleNamespace(open=THREADS - 3, lag=0.0, dead=False)
    door.busy = 1
    call = Conn()
    door.enqueue_req(call)
    assert call.answer().startswith(b"HTTP/1.1 503 ")
    assert door.started == []
    door.relay.open -= 1  # one stream ended
    second = Conn()
    door.enqueue_req(second)
    assert door.started == [second]


def test_a_relay_running_late_sheds_new_calls(door):
    door.relay = SimpleNamespace(open=5, lag=chatd_worker.RELAY_MAX_LAG * 1.5, dead=False)
    conn = Conn()
    door.enqueue_req(conn)
    answer = conn.answer()
    assert answer.startswith(b"HTTP/1.1 503 ") and b"streams relayed late" in answer
    assert b"\r\nRetry-After: 1\r\n" in answer
    door.relay.lag = chatd_worker.RELAY_MAX_LAG / 2
    again = Conn()
    door.enqueue_req(again)
    assert door.started == [again]


def test_a_worker_whose_relay_failed_sheds_every_call_and_stops(door):
    door.relay = SimpleNamespace(open=0, lag=0.0, dead=True)
    door.busy = 0  # even the first call: its stream would hang on a dead relay
    conn = Conn()
    door.enqueue_req(conn)
    assert b"stream relay stopped" in conn.answer()
    chatd_worker.StreamRelay._relay_died(door)
    assert door.alive is False


def test_the_admission_numbers_are_the_ones_the_readme_states():
    """README, "Resilience" and "Streaming", state these numbers; the tests
    above use the constants, this pins the constants to the text."""
    from chatd import admission, relay

    assert MAX_SETUPS == 1 and MAX_SETUP_WAIT == 3.0
    assert admission.MAX_LAG_SECONDS == 0.1 and admission.PROBE_SECONDS == 0.02
    assert chatd_worker.RELAY_MAX_LAG == 0.05 and relay.TICK == 0.02
    assert relay.CLIENT_STALL_SECS == 120.0
    assert chatd_worker.SWITCH_INTERVAL == 0.001
    assert chatd_worker.GC_THRESHOLDS == (10_000, 20, 100)


def test_a_whole_calls_slot_frees_as_its_upstream_call_goes_out(door):
    conns = [Conn() for _ in range(MAX_SETUPS + 1)]
    for conn in conns:
        door.enqueue_req(conn)
    door._sent(conns[0], stream=False)  # the rest is the upstream's latency
    ((wake, args),) = door.deferred
    wake(*args)
    assert door.started[-1] is conns[-1]


def test_a_waiting_call_is_shed_not_started_once_every_thread_is_busy(door):
    conns = [Conn() for _ in range(MAX_SETUPS + 1)]
    for conn in conns:
        door.enqueue_req(conn)
    door.busy = THREADS - 2  # every call thread taken meanwhile
    door._set_up_done(conns[0])
    ((wake, args),) = door.deferred
    wake(*args)
    assert conns[MAX_SETUPS].answer().startswith(b"HTTP/1.1 503 ")
    assert conns[MAX_SETUPS] not in door.started


def test_a_call_whose_body_is_still_coming_takes_no_set_up_slot(door):
    """A chunked body is read by the thread at its client's pace: four such must
    not stop every other call's set-up."""
    dripping = []
    for _ in range(MAX_SETUPS):
        conn = Conn()
        conn.body_pending = True
        door.enqueue_req(conn)
        dripping.append(conn)
    call = Conn()
    door.enqueue_req(call)
    assert door.started == [*dripping, call]
    assert door.setups == 1


def test_running_out_of_descriptors_pauses_accepting_and_keeps_the_loop(door):
    import errno

    class Listener:
        def accept(self):
            raise OSError(errno.EMFILE, "Too many open files")

    door.worker_connections = 100
    door.nr_conns = 0
    door.accept(Listener())  # returns: the main loop lives on
    assert door.nr_conns == 0


@pytest.mark.parametrize(
    "head, stripped",
    [
        (
            b"POST /chat HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            b"POST /chat HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
        ),
        (
            b"POST /chat HTTP/1.1\r\nContent-Length: 2\r\nexpect:  100-Continue\r\n\r\n",
            b"POST /chat HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
        ),
    ],
)
def test_an_answered_expect_is_taken_out_of_the_head_so_gunicorn_sends_no_second_100(
    head, stripped
):
    assert chatd_worker.strip_expect(head) == stripped


def test_a_worker_freezes_its_start_up_objects_and_collects_fully_less_often(monkeypatch):
    import gc

    monkeypatch.setattr(SheddingMixin, "load_wsgi", lambda self: None)
    before = gc.get_threshold()
    try:
        chatd_worker.ChatdWorker.load_wsgi(
            chatd_worker.ChatdWorker.__new__(chatd_worker.ChatdWorker)
        )
        assert gc.get_threshold() == chatd_worker.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.parametrize(
    "is_ssl, is_http2, relayed",
    [(False, False, True), (True, False, False), (False, True, False)],
)
def test_only_plain_http1_connections_are_offered_the_relay(monkeypatch, is_ssl, is_http2, relayed):
    """The relay writes HTTP/1.x chunks to a plain socket: a TLS or HTTP/2
    connection's stream stays on its thread."""
    from chatd.relay import CAN_RELAY

    seen = {}

    def app(environ, start_response):
        seen["can_relay"] = environ[CAN_RELAY]
        return [b"whole"]

    monkeypatch.setattr(ThreadWorker, "load_wsgi", lambda self: None)
    w = chatd_worker.ChatdWorker.__new__(chatd_worker.ChatdWorker)
    w.cfg = SimpleNamespace(is_ssl=is_ssl)
    w._relay_local = threading.local()
    w._relay_local.conn = SimpleNamespace(is_http2=is_http2)
    w.wsgi = app
    chatd_worker.StreamRelay.load_wsgi(w)
    assert w.wsgi({}, lambda *a: None) == [b"whole"]
    assert seen["can_relay"] is relayed


def test_a_worker_sets_its_gil_switch_interval(monkeypatch):
    import sys

    monkeypatch.setattr(chatd_worker.WholeRequests, "init_process", lambda self: None)
    before = sys.getswitchinterval()
    try:
        chatd_worker.ChatdWorker.init_process(
            chatd_worker.ChatdWorker.__new__(chatd_worker.ChatdWorker)
        )
        assert sys.getswitchinterval() == pytest.approx(chatd_worker.SWITCH_INTERVAL)
    finally:
        sys.setswitchinterval(before)


def test_the_worker_module_keeps_requests_out_of_gunicorns_master():
    """gunicorn's master imports the worker class: it should not pay for the
    HTTP client it never uses (~15 MiB of RSS when it did)."""
    import subprocess
    import sys

    code = "import sys, chatd.worker; print('requests' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_the_heartbeat_and_parent_check_run_once_a_second_not_per_loop_turn(monkeypatch):
    """gthread's loop calls notify() and is_parent_alive() on every turn; each is a
    system call, and a request takes several turns."""
    calls = {"notify": 0, "parent": 0}
    monkeypatch.setattr(
        ThreadWorker, "notify", lambda self: calls.__setitem__("notify", calls["notify"] + 1)
    )

    def parent_alive(self):
        calls["parent"] += 1
        return False  # the parent is gone: seen on the first check of each second

    monkeypatch.setattr(ThreadWorker, "is_parent_alive", parent_alive)
    clock = [1000.0]
    # The worker module's clock only: time.monotonic itself stays as it is.
    monkeypatch.setattr(chatd_worker, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    w = chatd_worker.ChatdWorker.__new__(chatd_worker.ChatdWorker)
    seen = []
    for _ in range(50):  # fifty loop turns within one heartbeat
        w.notify()
        seen.append(w.is_parent_alive())
    assert calls == {"notify": 1, "parent": 1}
    assert seen[0] is False and all(seen[1:])
    clock[0] += chatd_worker.HEARTBEAT_SECS
    w.notify()
    assert w.is_parent_alive() is False
    assert calls == {"notify": 2, "parent": 2}


def test_the_heartbeat_stays_well_inside_gunicorns_worker_timeout():
    """gunicorn.conf.py sets the arbiter's timeout to timeout_secs + 30 s: a beat a
    second is never near it, even with a slow loop turn or two."""
    assert chatd_worker.HEARTBEAT_SECS * 10 <= 30
    with open(Path(__file__).parent.parent / "gunicorn.conf.py") as f:
        conf = f.read()
    assert "timeout = int(_settings.timeout_secs) + 30" in conf


def test_a_request_whole_at_once_is_released_without_touching_the_poller():
    """Most requests arrive whole with their connection: the loop never watched them,
    and unregistering one would format an exception (the socket's repr) per request."""

    class Poller:
        def __init__(self):
            self.unregistered = []

        def unregister(self, sock):
            self.unregistered.append(sock)

    w = chatd_worker.WholeRequests.__new__(chatd_worker.WholeRequests)
    w.poller = Poller()
    w.held_bytes = w.reserved_bytes = 0

    class Conn:
        def __init__(self, sock):
            self.sock = sock

    whole, watched = Conn("whole"), Conn("watched")
    w.held = {whole: chatd_worker.Held(b"", 0.0), watched: chatd_worker.Held(b"", 0.0)}
    w.held[watched].watched = True
    w.release(whole)
    w.release(watched)
    assert w.poller.unregistered == ["watched"]
    assert w.held == {}


def test_a_connection_keeps_no_copy_of_its_head_once_handed_to_a_thread():
    """A kept-alive connection lives long: it carries its request line and the
    client's request id, not its last head (which gunicorn allows up to ~800 KiB)."""
    w = chatd_worker.WholeRequests.__new__(chatd_worker.WholeRequests)
    w.held_bytes = w.reserved_bytes = 0
    w.enqueue_req = lambda conn: None
    big = b"POST /chat HTTP/1.1\r\nX-Request-ID: id-1\r\n" + b"X-Pad: " + b"p" * 8000 + b"\r\n\r\n"

    class Conn:
        sock = None
        parser = None

        def init(self):
            self.parser = SimpleNamespace(unreader=SimpleNamespace(unread=lambda data: None))

    conn = Conn()
    held = chatd_worker.Held(big, 0.0)
    held.head_end = len(big)
    w.held = {conn: held}
    w.hand_over(conn, held)
    assert conn.first_bytes == big[: chatd_worker.PEEK_BYTES]
    assert conn.given_request_id == b"id-1"


@pytest.mark.parametrize(
    "fields, expected",
    [
        (b"Content-Length: 12\r\n", (12, False, False, False)),
        (b"Transfer-Encoding: chunked\r\n", (None, False, False, True)),
        (b"transfer-encoding: Chunked\r\nExpect: 100-continue\r\n", (None, False, True, True)),
        (b"Transfer-Encoding: gzip, chunked\r\n", (None, False, False, True)),
        (
            b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
            (None, False, False, True),
        ),
        (b"Transfer-Encoding: chunked, gzip\r\n", (None, True, False, False)),
        (b"Transfer-Encoding: br, chunked\r\n", (None, True, False, False)),
        (
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            (None, True, False, False),
        ),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", (5, True, False, False)),
        (b"Content-Length: 5\r\nContent-Length: 5\r\n", (5, True, False, False)),
        (b"", (None, False, False, False)),
    ],
)
def test_what_a_head_says_of_its_body(fields, expected):
    head = b"POST /chat HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"
    assert chatd_worker.declared_body(head) == expected


@pytest.mark.parametrize(
    "line, version",
    [
        (b"POST /chat HTTP/1.1", (1, 1)),
        (b"\r\nPOST /chat HTTP/1.1", (1, 1)),  # gunicorn skips one CRLF first
        (b"POST /chat HTTP/1.2", (1, 2)),
        (b"POST /chat HTTP/1.0", (1, 0)),
        (b"POST /chat HTTP/11", (0, 0)),
        (b"POST /chat", (0, 0)),
    ],
)
def test_a_heads_http_version_is_read_as_gunicorn_reads_it(line, version):
    assert chatd_worker.http_version(line + b"\r\nHost: x\r\n\r\n") == version


def test_the_held_replay_gives_socket_sized_pieces_then_the_socket():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        unreader = chatd_worker.HeldUnreader(ours, b"a" * 20_000)
        assert [len(unreader.chunk()) for _ in range(3)] == [8192, 8192, 3616]
        unreader.unread(b"back")
        theirs.sendall(b"from the socket")
        assert unreader.take_buffered() == b"back"  # nothing held is left: the socket is next
        assert unreader.read() == b"from the socket"
        held = chatd_worker.HeldUnreader(ours, b"rest of it")
        held.unread(b"pushed ")
        assert held.take_buffered() == b"pushed rest of it"  # pipelined bytes are kept


def test_a_chunked_body_in_http_1_0_is_not_held():
    """gunicorn refuses it from its head: holding its body would only waste time."""
    head = b"POST /chat HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert chatd_worker.declared_body(head) == (None, True, False, False)


def held_chunks(max_content: int = 1000) -> chatd_worker.HeldChunks:
    limits = SimpleNamespace(
        limit_request_field_size=8190,
        max_buffer_headers=100 * 8192 + 4,
        parse_headers=chatd_worker.refuse_trailers,
    )
    return chatd_worker.HeldChunks(limits, max_content)


@pytest.mark.parametrize(
    "body, done",
    [
        (b"5\r\nhello\r\n0\r\n\r\n", True),
        (b"5;ext=1\r\nhello\r\n0\r\n\r\n", True),
        (b"5\r\nhello\r\n0\r\n\r\nPOST /next HTTP/1.1\r\n", True),  # pipelined: its own
        (b"0\n\n", False),  # gunicorn wants CRLF: it waits for more
        (b"1\nx\n0\n\n", False),
        (b"0\r\n\r\r\n", False),
        (b"00000000000000001\r\n", False),  # a long size is still a size: its byte waits
        (b"5\r\nhello", False),
    ],
)
def test_a_held_chunked_body_ends_where_gunicorns_reader_says(body, done):
    for pieces in ([body], [body[i : i + 1] for i in range(len(body))]):  # whole, byte by byte
        chunks = held_chunks()
        for piece in pieces:
            chunks.feed(piece)
        assert (chunks.done, chunks.refused) == (done, False), pieces
        chunks.close()


def test_a_held_chunked_body_gunicorns_reader_refuses_is_marked_refused():
    chunks = held_chunks()
    chunks.feed(b"zz\r\n")
    assert chunks.refused and not chunks.done


def test_a_held_chunked_body_past_its_limit_is_too_large():
    chunks = held_chunks(max_content=10)
    chunks.feed(b"6\r\nhello \r\n")
    assert not chunks.too_large
    chunks.feed(b"6\r\nworld!\r\n")
    assert chunks.too_large and not chunks.done


def test_a_held_chunked_body_gets_the_body_deadline(monkeypatch):
    """The loop answers 408 to a held request past its deadline (murder_pending):
    a chunked body gets body_timeout_secs from its head, as a declared one does."""
    w = chatd_worker.WholeRequests.__new__(chatd_worker.WholeRequests)
    w.body_timeout_secs, w.max_body_bytes = 30.0, 1000
    w.hold_budget_bytes, w.reserved_bytes, w.held_bytes = 10**6, 0, 0
    w.chunk_limits = SimpleNamespace(
        limit_request_field_size=8190,
        max_buffer_headers=8192,
        parse_headers=chatd_worker.refuse_trailers,
    )
    monkeypatch.setattr(chatd_worker, "time", SimpleNamespace(monotonic=lambda: 100.0))
    head = b"POST /chat HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    held = chatd_worker.Held(head + b"5\r\nhel", 0.0)
    held.head_end = len(head)
    try:
        assert w._hold_chunked(None, held, head, expect=False) is False  # still waiting
        assert held.deadline == 130.0
    finally:
        held.chunks.close()
