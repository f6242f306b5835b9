"""chatd.worker ~~~ gthread: whole requests, shedding at the door, relayed streams, JSON errors.

Four changes to gthread, each its own piece, put together in :class:`ChatdWorker`:

- :class:`WholeRequests`: gthread hands a connection to a thread as soon as it
  is readable, and that thread then blocks reading a head or body the client
  may drip one byte a second. Here a connection stays in the worker's event
  loop (non-blocking reads, one selector) until its whole head, and its body
  (of declared length, or chunked to its last chunk), has arrived, and only
  then goes on, with the bytes read
  replayed to gunicorn's parser. A client that takes longer than
  ``head_timeout_secs`` for its head or ``body_timeout_secs`` for its body gets
  a JSON 408 and is closed.
- :class:`SheddingMixin`: when no call slot is free or :mod:`chatd.admission` says
  the CPU, descriptors or memory ran out, a call is answered 503 with
  ``Retry-After`` from the main loop, without a thread: as soon as its head is
  in (before its body is read) for a held connection; health checks still get
  the kept threads. At most MAX_SETUPS calls per worker are in set-up at once.
- :class:`StreamRelay`: a stream, once set up, goes on in the worker's relay
  (:mod:`chatd.relay`), one event loop for all its open streams, and its
  thread is free.
- gunicorn answers a request it cannot parse itself, as an HTML page; here
  those answers carry chatd's JSON error body (:func:`write_json_error`).
"""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import re
import selectors
import socket
import sys
import threading
import time
from collections import deque
from concurrent import futures
from functools import cached_property, partial
from types import SimpleNamespace

import greenlet
from gunicorn import util
from gunicorn.http.body import ChunkedReader
from gunicorn.http.errors import LimitRequestHeaders
from gunicorn.http.message import DEFAULT_MAX_HEADERFIELD_SIZE, MAX_HEADERS
from gunicorn.http.unreader import SocketUnreader
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from chatd import admission, codec
from chatd.dialects import anthropic, ollama
from chatd.observability import request_id_from
from chatd.relay import CAN_RELAY, RELAYED, Relay

log = logging.getLogger("chatd.worker")

# A relay thread's deepest stack is Flask -> chatd -> requests -> http.client,
# a few dozen frames (Python frames themselves live off the C stack since 3.11):
# 512 KiB is ample, and thousands of threads need not reserve 8 MiB each.
STACK_SIZE = 512 * 1024
# Served with a kept thread even while calls are shed: load balancers and
# operators must see an overloaded chatd as up, and why.
ALWAYS_SERVED = (
    b"GET /health",
    b"HEAD /health",
    b"GET /metrics",
    b"GET /chat/providers",
    b"GET /providers",
)
# Enough to see the request line; what the client sent of the body is drained,
# up to DRAIN_BYTES, so that closing does not reset the connection under the 503.
PEEK_BYTES = 64
DRAIN_BYTES = 256 * 1024
# Calls in set-up at once per worker (the rest wait their turn, in order), and
# how long one may wait before it is shed: the scheduling delay chatd accepts.
MAX_SETUPS = 1
MAX_SETUP_WAIT = 3.0
SET_UP_LATE = f"no call set up within {MAX_SETUP_WAIT:g} s: CPU saturated"
SENT_GRACE = 0.01
# Seconds a thread may hold the GIL while another waits (sys.setswitchinterval).
SWITCH_INTERVAL = 0.001
# gc thresholds (generation 0 allocations, then collections of the one below):
# Python's are (700, 10, 10).
GC_THRESHOLDS = (10_000, 20, 100)
# A relay this late in serving its streams' sockets sheds new calls: each
# call's set-up takes the CPU from the pieces of the streams already open.
RELAY_MAX_LAG = 0.05
# While calls wait for a set-up slot, the main loop is woken this often.
SETUP_TICK = 0.01
IDLE_TICK = 0.1
# The request threads' name in the OS, so operators (and tests) can count them.
THREAD_NAME = b"chatd-request"
LINGER_NAME = b"chatd-linger"
PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True)
# Connections accepted per wake-up of the main loop, at most (a few, so one
# worker does not take a whole burst from the other).
ACCEPT_BATCH = 16
# Sheds are logged as one summary line at most this often.
LOG_EVERY_SECONDS = 10.0
# accept() errors that say the process is out of something, not that the loop is broken.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Closes that linger (RFC 9112 9.6: drain, then close) run here, never on the main loop.
LINGER_THREADS = 2
# gthread's loop tells the arbiter it is alive (a utime of its tmp file) and
# checks its parent (getppid) on every turn, several turns per request; once a
# second is enough for both: the arbiter's own timeout is 30 s or more.
HEARTBEAT_SECS = 1.0


def name_thread(name: bytes) -> None:
    """Give this thread its name in the OS (top -H, /proc/<pid>/task/*/comm)."""
    try:
        _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)
    except (AttributeError, OSError):
        pass  # not Linux: only the name is missing


# A client's X-Request-ID in a head: a line of its own between CRLFs, not folded
# onto the next (heads gunicorn would refuse give no id).
_REQUEST_ID_FIELD = re.compile(
    rb"\r\nx-request-id:[ \t]*([^\r\n]*)(?=\r\n(?![ \t]))", re.IGNORECASE
)


def client_request_id(head: bytes) -> bytes | None:
    """The X-Request-ID a head carries, raw; None when it has none or several
    (gunicorn joins several into one value, which the app then refuses)."""
    found = _REQUEST_ID_FIELD.findall(head)
    return found[0] if len(found) == 1 else None


def shed_request_id(given: bytes | None) -> str:
    """The id a shed answer carries: the client's (``given``) when it is one the
    app would keep, else a new one."""
    return request_id_from(given.strip().decode("latin-1") if given else None)


def shed_body(reason: str, request_line: bytes = b"", request_id: str = "") -> dict:
    """The 503's body in the envelope of the dialect the request's path belongs to."""
    parts = request_line.split(b" ", 2)
    path = parts[1] if len(parts) > 1 else b""
    if path.startswith(b"/api/"):
        return ollama.error_body(503, reason)
    if path.startswith(b"/v1/messages"):
        return anthropic.error_body(503, reason, request_id)
    error = {"type": "overloaded", "message": reason, "code": "overloaded"}
    if request_id:
        error["request_id"] = request_id
    return {"error": error}


def shed_answer(reason: str, request_line: bytes = b"", given_id: bytes | None = None) -> bytes:
    """The whole 503 answer, in the error envelope the client reads, with a request id
    (the client's ``given_id`` when the app would keep it)."""
    request_id = shed_request_id(given_id)
    body = codec.dumps(shed_body(reason, request_line, request_id))
    answer = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        "Retry-After: 1\r\n"
        f"X-Request-ID: {request_id}\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return answer.encode() + body


class ChatdConn(TConn):
    """gthread's connection, whose lingering close runs off the main loop.

    gthread closes a ``Connection: close`` (or HTTP/1.0) connection gracefully
    on its main loop: half-close, then drain for up to 2 s. One such client
    would stall every other connection of the worker for that long.
    """

    lingering: futures.ThreadPoolExecutor | None = None  # set per worker process

    def close(self, graceful=False):
        if graceful and self.lingering is not None:
            self.sock.setblocking(True)
            self.lingering.submit(util.close_graceful, self.sock)
        else:
            super().close(graceful)


class SheddingMixin:
    """For a gthread ThreadWorker: shed connections no thread can serve now."""

    def init_process(self):
        # Before the pool starts any thread (it starts them as calls come).
        threading.stack_size(STACK_SIZE)
        # Connections handed to the pool and not finished (main loop only: no lock).
        self.busy = 0
        # Connections in set-up -> when their upstream call went out (None: not yet).
        self.in_setup: dict = {}
        self.waiting: deque = deque()  # (connection, since) waiting for a set-up slot
        self._local = threading.local()
        self._setup_lock = threading.Lock()
        self.shed = 0
        self._shed_logged = time.monotonic()
        self.pressure = admission.pressure.start()
        # Here, in the worker, not at import: the master imports this module
        # before PROMETHEUS_MULTIPROC_DIR is set, and prometheus_client picks
        # its storage at import.
        from prometheus_client import Counter

        self.sheds = Counter(
            "chatd_shed",
            "Calls a worker answered 503 at its door, before the app, by why: "
            "no_thread, saturated, set_up_wait, descriptors (accept() failed)",
            ["why"],
            registry=None,
        )
        ChatdConn.lingering = futures.ThreadPoolExecutor(
            max_workers=LINGER_THREADS, initializer=name_thread, initargs=(LINGER_NAME,)
        )
        super().init_process()

    def get_thread_pool(self):
        return futures.ThreadPoolExecutor(
            max_workers=self.cfg.threads, initializer=name_thread, initargs=(THREAD_NAME,)
        )

    def load_wsgi(self):
        super().load_wsgi()
        app = self.wsgi

        def set_up(environ, start_response):
            conn = self._local.conn
            # The adapter says when the upstream call went out.
            admission.on_set_up(lambda stream: self._sent(conn, stream))
            try:
                return app(environ, start_response)
            finally:
                admission.on_set_up(None)
                self._set_up_done(conn)

        set_up.__wrapped__ = getattr(app, "__wrapped__", app)  # for post_worker_init
        self.wsgi = set_up
        threading.Thread(target=self._clock, name="chatd-setup-clock", daemon=True).start()

    def _clock(self) -> None:
        """Wake the main loop while calls wait, so a slot whose upstream call went
        out SENT_GRACE ago frees even when nothing else happens."""
        while self.alive:
            if self.waiting:
                self.method_queue.defer(self._start_waiting)
                time.sleep(SETUP_TICK)
            else:
                time.sleep(IDLE_TICK)  # a wait that starts is woken by its set-up's end

    def handle(self, conn):
        self._local.conn = conn
        return super().handle(conn)

    def accept(self, listener):
        """Accept what the listen backlog holds, up to ACCEPT_BATCH per wake-up.

        gthread accepts one connection per wake-up of its loop, which also
        beats the heartbeat and checks its parent each time: under a flood of
        connections (thousands of streams opened at once) the backlog drains
        slowly, and a health check waits behind it.
        """
        for _ in range(ACCEPT_BATCH):
            if self.nr_conns >= self.worker_connections:
                return
            try:
                client_sock, client_addr = listener.accept()
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                    return
                if e.errno in OUT_OF_RESOURCES:
                    # Out of descriptors or buffers: the main loop must live on; the
                    # backlog keeps the connection until one closes.
                    self._note_shed(f"cannot accept: {errno.errorcode[e.errno]}", "descriptors")
                    return
                raise
            self.nr_conns += 1
            client_sock.setblocking(True)
            self.enqueue_req(ChatdConn(self.cfg, client_sock, client_addr, listener.getsockname()))

    def enqueue_req(self, conn):
        # With nothing in flight, shedding frees nothing: the first call always runs.
        if (
            self.calls >= self.capacity
            or self.saturated
            or self.setups >= MAX_SETUPS
            or self.waiting  # in order: no newcomer before those already waiting
        ):
            line = self._request_line(conn)
            if line is None:
                return  # waiting for the request, or gone
            if line.startswith(ALWAYS_SERVED) and self.busy < self.threads:
                self._start(conn, setup=False)
            elif self.calls >= self.capacity or self.saturated:
                self._shed(conn)
            else:
                self.waiting.append((conn, time.monotonic()))
            return
        self._start(conn)

    def refuse_at_head(self, conn, head: bytes) -> bool:
        """Shed a held connection as soon as its head is in, before its body is read,
        when no call slot is free or the worker is saturated (health checks excepted)."""
        full = self.calls >= self.capacity
        if not (full or self.saturated) or head.startswith(ALWAYS_SERVED):
            return False
        self.release(conn)
        conn.request_line = head[:PEEK_BYTES]
        conn.given_request_id = client_request_id(head)
        self._shed(conn)
        return True

    def _start(self, conn, setup: bool = True) -> None:
        # A body still to arrive (odd, or past the hold budget) is read by the
        # thread: its client's pace must not hold a set-up slot.
        setup = setup and not getattr(conn, "body_pending", False)
        if setup:
            with self._setup_lock:
                self.in_setup[conn] = None
        self.busy += 1
        super().enqueue_req(conn)

    # Read once: gunicorn's cfg.threads is a settings lookup, and the door asks per request.
    @cached_property
    def threads(self) -> int:
        return self.cfg.threads

    @cached_property
    def capacity(self) -> int:
        """Calls this worker runs at once: its threads less the kept ones, at least
        one (as the dispatcher counts them: a tiny pool still serves)."""
        return max(1, self.threads - admission.RESERVED_THREADS)

    @property
    def overload(self) -> str | None:
        """Why this worker takes no more calls now (None: it can): the CPU, fds or
        memory ran out (chatd.admission), or its relay runs behind its streams."""
        relay = getattr(self, "relay", None)
        if relay is not None:
            if relay.dead:
                return "this worker's stream relay stopped: it is being replaced"
            if relay.lag > RELAY_MAX_LAG:
                return f"streams relayed late (relay lag {relay.lag * 1000:.0f} ms)"
        return self.pressure.reason

    @property
    def saturated(self) -> bool:
        """Shed for ``overload``: with nothing in flight, shedding frees nothing and
        the first call always runs, unless the relay is dead."""
        if not self.overload:
            return False
        relay = getattr(self, "relay", None)
        return bool(self.calls) or (relay is not None and relay.dead)

    @property
    def calls(self) -> int:
        """Calls this worker carries: on its threads, and streams on its relay."""
        relay = getattr(self, "relay", None)
        return self.busy + (relay.open if relay is not None else 0)

    @property
    def setups(self) -> int:
        return len(self.in_setup)

    def _sent(self, conn, stream: bool) -> None:
        """``conn``'s upstream call went out (its thread): a whole call's slot frees
        now (what is left is waiting), a stream's SENT_GRACE later."""
        if not stream:
            self._set_up_done(conn)
            return
        with self._setup_lock:
            if conn in self.in_setup:
                self.in_setup[conn] = time.monotonic()

    def _set_up_done(self, conn) -> None:
        """``conn``'s call is set up (any thread): its set-up slot frees."""
        with self._setup_lock:
            if self.in_setup.pop(conn, False) is False:
                return
            wake = bool(self.waiting)
        if wake:
            self.method_queue.defer(self._start_waiting)

    def _start_waiting(self) -> None:
        """Start waiting calls while set-up slots are free (main loop)."""
        now = time.monotonic()
        with self._setup_lock:
            for conn, sent in list(self.in_setup.items()):
                if sent is not None and now - sent > SENT_GRACE:
                    del self.in_setup[conn]  # waiting on the upstream, not the CPU
        while self.waiting and self.setups < MAX_SETUPS:
            conn, since = self.waiting.popleft()
            if self.calls >= self.capacity:
                self._shed(conn)
            elif self.saturated:
                self._shed(conn, self.overload, "saturated")
            elif now - since > MAX_SETUP_WAIT:
                self._shed(conn, SET_UP_LATE, "set_up_wait")
            else:
                self._start(conn)

    def murder_pending(self):
        super().murder_pending()
        # Those that waited too long go, even while no set-up finishes.
        now = time.monotonic()
        while self.waiting and now - self.waiting[0][1] > MAX_SETUP_WAIT:
            conn, _ = self.waiting.popleft()
            self._shed(conn, SET_UP_LATE, "set_up_wait")

    def finish_request(self, conn, fs):
        self.busy -= 1
        # The app was never reached (the client left, a bad request): its slot frees.
        self._set_up_done(conn)
        super().finish_request(conn, fs)

    def _request_line(self, conn) -> bytes | None:
        """The start of the request, or None: then the connection waits on the poller
        for its request (as gthread's deferred connections do), or was closed."""
        first = getattr(conn, "first_bytes", None)
        if first:
            # Read already, by WholeRequests: the request is whole.
            conn.first_bytes = None
            conn.request_line = first
            return first
        sock = conn.sock
        try:
            sock.setblocking(False)
            start = sock.recv(PEEK_BYTES, socket.MSG_PEEK)
        except BlockingIOError:
            start = None
        except OSError:
            start = b""
        if start:
            conn.request_line = start
            return start
        if start is None and self.alive:
            conn.timeout = time.monotonic() + self.cfg.keepalive
            self.pending_conns.append(conn)
            self.poller.register(
                sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn)
            )
            return None
        self.nr_conns -= 1
        conn.close()
        return None

    def _shed(self, conn, reason: str | None = None, why: str | None = None) -> None:
        if reason is None and self.overload and self.calls < self.capacity:
            reason, why = self.overload, "saturated"
        reason = reason or f"all {self.capacity} call slots of this chatd worker are taken"
        sock = conn.sock
        try:
            # Never block the main loop: a whole request's socket is blocking again.
            sock.setblocking(False)
            drained = 0
            while drained < DRAIN_BYTES:
                data = sock.recv(65536)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass  # nothing more has arrived (or the client left)
        try:
            answer = shed_answer(
                reason, getattr(conn, "request_line", b""), getattr(conn, "given_request_id", None)
            )
            sock.send(answer)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.nr_conns -= 1
        conn.close()
        self._note_shed(reason, why or "no_thread")

    def _note_shed(self, reason: str, why: str) -> None:
        """Count a shed (chatd_shed_total{why}); log the count at most every LOG_EVERY_SECONDS."""
        sheds = getattr(self, "sheds", None)
        if sheds is not None:
            sheds.labels(why).inc()
        self.shed += 1
        now = time.monotonic()
        if now - self._shed_logged >= LOG_EVERY_SECONDS:
            log.warning("shed %d connections (last: %s)", self.shed, reason)
            self.shed = 0
            self._shed_logged = now


# gunicorn's statuses and the error types chatd gives them.
ERROR_TYPES = {
    400: "invalid_request",
    403: "forbidden",
    408: "request_timeout",
    413: "request_too_large",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal",
    501: "not_implemented",
}
# gunicorn's message names what it could not parse; no more of it than this.
MAX_MESSAGE = 200


def json_error(status_int: int, reason: str, mesg: str) -> bytes:
    """A whole HTTP answer with chatd's JSON error body, closing the connection."""
    error_type = ERROR_TYPES.get(status_int, "http_error")
    message = (mesg or reason)[:MAX_MESSAGE]
    if status_int >= 500:
        # gunicorn's 500 here is a server fault; its text may name internals.
        message = reason
    body = codec.dumps({"error": {"type": error_type, "message": message, "code": error_type}})
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """Write gunicorn's error answer as chatd's JSON body (util.write_error's signature)."""
    util.write_nonblock(sock, json_error(status_int, reason, mesg))


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
READ_SIZE = 65536


class Held:
    """What the event loop has read of one connection's next request."""

    __slots__ = (
        "data",
        "head_end",
        "need",
        "deadline",
        "scanned",
        "reserved",
        "watched",
        "chunks",
        "fed",
        "content",
    )

    def __init__(self, data: bytes, deadline: float):
        self.data = bytearray(data)
        self.head_end = -1  # index just past the blank line, once seen
        self.need = 0  # bytes that make the request whole (head + declared body)
        self.deadline = deadline
        self.scanned = 0  # where to resume looking for the blank line
        self.reserved = 0  # the declared body's bytes, counted against the hold budget
        self.watched = False  # registered with the poller
        self.chunks = None  # a chunked body's decoder: it says when the body is whole
        self.fed = 0  # how much of ``data`` the decoder has seen
        self.content = 0  # the chunked body's size so far, without its framing


EXPECT_LINE = re.compile(rb"\r?\nexpect:[ \t]*100-continue[ \t]*(?=\r?\n)", re.IGNORECASE)


def strip_expect(head: bytes) -> bytes:
    """``head`` without its ``Expect: 100-continue`` line (chatd answered it already)."""
    return EXPECT_LINE.sub(b"", head, count=1)


# Transfer codings gunicorn takes before a last ``chunked``.
_BEFORE_CHUNKED = frozenset({b"identity", b"gzip", b"deflate", b"compress"})


def declared_body(head: bytes) -> tuple[int | None, bool, bool, bool]:
    """(Content-Length or None, unsure, Expect: 100-continue, chunked) of a head.

    Only enough to know how much more to wait for: gunicorn's parser still
    judges the request. ``chunked`` as gunicorn reads it (codings listed in one
    or more Transfer-Encoding fields, ending in one ``chunked``; HTTP/1.1; no
    Content-Length). Anything else odd (two lengths, a bad one, other codings)
    is "unsure", and the connection is handed over at once: gunicorn refuses
    such a head before reading any body.
    """
    length, unsure, expect, codings = None, False, False, []
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            if length is not None or not value.isdigit():
                unsure = True
            else:
                length = int(value)
        elif name == b"transfer-encoding":
            codings += [coding.strip(b" \t").lower() for coding in value.split(b",")]
        elif name == b"expect" and value.lower() == b"100-continue":
            expect = True
    chunked = (
        bool(codings)
        and codings[-1] == b"chunked"
        and _BEFORE_CHUNKED.issuperset(codings[:-1])
        and length is None
        and http_version(head) >= (1, 1)
    )
    if codings and not chunked:
        unsure = True
    return length, unsure, expect, chunked


class HeldUnreader(SocketUnreader):
    """gunicorn's socket unreader, giving first what the loop held, in the pieces
    a socket read would. Replayed whole, a chunked body makes gunicorn's reader
    copy what is left of its read per chunk: quadratic in the body (4 s of CPU
    for 4 MiB of 4 KiB chunks)."""

    def __init__(self, sock, held: bytes):
        super().__init__(sock)
        self.held = memoryview(held)

    def chunk(self, size_hint=None):
        if not self.held:
            return super().chunk(size_hint)
        size = self.mxchunk
        if size_hint and size_hint > size:
            size = min(size_hint, self.max_body_chunk)
        piece, self.held = bytes(self.held[:size]), self.held[size:]
        return piece

    def take_buffered(self):
        data = super().take_buffered() + bytes(self.held)  # what was unread comes first
        self.held = memoryview(b"")
        return data


def http_version(head: bytes) -> tuple[int, int]:
    """The request line's HTTP version, as gunicorn reads it (one CRLF before
    the request line is skipped); (0, 0) when there is none to read."""
    if head.startswith(b"\r\n"):
        head = head[2:]
    version = head.split(b"\r\n", 1)[0].rsplit(b" ", 1)[-1]
    if len(version) == 8 and version[:5] == b"HTTP/" and version[6:7] == b".":
        major, minor = version[5:6], version[7:8]
        if major.isdigit() and minor.isdigit():
            return int(major), int(minor)
    return (0, 0)


class TrailersRefused(Exception):
    """A held chunked body came with trailers."""


def refuse_trailers(data: bytes, from_trailer: bool = False):
    """The held reader's header parser, for trailers only: chatd takes none. No
    client of chatd sends them, and gunicorn's own check of them runs inside
    the app's read of the body, where a bad one was a 500."""
    raise TrailersRefused()


class HeldChunks:
    """Where a held chunked body ends, as gunicorn's own reader sees it.

    gunicorn's ChunkedReader runs in a greenlet over the bytes held so far;
    when it wants more, it switches back to the event loop, which resumes it
    as bytes arrive. So the request goes to a thread exactly when gunicorn
    can read its whole body (or refuse it) from what is held, never waiting on
    the client: chatd and gunicorn cannot disagree on where the body ends.
    """

    #: Trailers held, at most (gunicorn allows a head's worth, ~800 KiB, and
    #: rescans them per read: dripped, that is quadratic on the event loop).
    #: Past it, the loop answers 431: no client of chatd sends trailers.
    MAX_TRAILERS = 8 * 1024
    #: What one read of the held bytes returns, at most: what a socket read
    #: gives gunicorn, so its reader costs here what it costs on a socket.
    READ_SIZE = 8 * 1024
    #: Chunks in one body, at most. gunicorn's reader costs ~2 µs a chunk (and
    #: the body is read twice: here, then by gunicorn): a body of 1-byte chunks
    #: would cost seconds of CPU. Real clients send chunks of kilobytes.
    MAX_CHUNKS = 16 * 1024

    def __init__(self, limits, max_content: int):
        self.max_content = max_content
        self.content = 0  # the body's bytes so far, without their framing
        self.done = False  # it ended: gunicorn reads it whole from what is held
        self.refused = False  # gunicorn's reader refused it: the loop answers 400
        self.too_large = False
        self.trailers_too_large = False
        self.too_many_chunks = False
        self.trailers_refused = False
        self._pieces = 0
        self._pending = b""
        self._reader = ChunkedReader(limits, self)
        self._parse = greenlet.greenlet(self._run)

    def refusal(self) -> tuple[int, str, str] | None:
        """(status, reason, message) the loop answers this body with itself, or None.

        A malformed body is answered here too, not handed over: gunicorn's own
        reads, split elsewhere, might take a long size line the held reader
        refused, and then wait on the client.
        """
        if self.too_many_chunks:
            return 400, "Bad Request", f"request body is in more than {self.MAX_CHUNKS} chunks"
        if self.trailers_too_large:
            mesg = f"request trailers are larger than {self.MAX_TRAILERS} bytes"
            return 431, "Request Header Fields Too Large", mesg
        if self.trailers_refused:
            return 400, "Bad Request", "chunked request bodies with trailers are not accepted"
        if self.refused:
            return 400, "Bad Request", "the chunked request body is malformed"
        return None

    def feed(self, data: bytes) -> None:
        """(The event loop.) ``data`` arrived: the reader takes what it can."""
        self._pending += data
        if self._parse is not None and not self._parse.dead:
            self._parse.switch()

    def close(self) -> None:
        """End the reader's greenlet now, in the loop's thread, if it still waits."""
        parse, self._parse = self._parse, None
        if parse is not None and not parse.dead:
            parse.throw()  # GreenletExit: ends it quietly

    def _run(self) -> None:
        try:
            for piece in self._reader.parser:
                self.content += len(piece)
                self._pieces += 1  # a chunk, or the part of one a read held
                if self.content > self.max_content:
                    self.too_large = True
                    return
                if self._pieces > self.MAX_CHUNKS:
                    self.too_many_chunks = True
                    return
            self.done = True
        except LimitRequestHeaders:
            self.trailers_too_large = True  # over our limit, maybe not gunicorn's
        except TrailersRefused:
            self.trailers_refused = True
        except Exception:
            self.refused = True

    # -- the unreader, as ChunkedReader uses it ------------------------------

    def read(self, size=None, read_ahead=None) -> bytes:
        while not self._pending:
            greenlet.getcurrent().parent.switch()  # back to the loop until more comes
        data, self._pending = self._pending[: self.READ_SIZE], self._pending[self.READ_SIZE :]
        return data

    def unread(self, data: bytes) -> None:
        self._pending = data + self._pending


class WholeRequests:
    """For a gthread ThreadWorker: give a connection on only once its request is whole.

    Every way gthread gives a connection to a thread (a new connection, a
    kept-alive one turning readable, read-ahead left after a response) goes
    through ``enqueue_req``; this holds the connection in the event loop first.
    TLS and HTTP/2 prior knowledge (neither used by chatd) go straight through.
    A chunked body is held until its last chunk. A body over ``max_body_bytes``
    (declared, or counted as chunks arrive) is answered 413 from the loop. A
    head that is odd about its body (two lengths, another transfer coding) is
    handed over at once for gunicorn to refuse, and so is any body while the
    worker already holds ``hold_budget_bytes`` in all.
    """

    # Set from gunicorn.conf.py (in the master, so a reload sets them again).
    head_timeout_secs = 10.0
    body_timeout_secs = 30.0
    max_body_bytes = 4 << 20
    hold_budget_bytes = 64 << 20

    def init_process(self):
        self.held: dict = {}
        self.held_bytes = 0
        # Bodies the held connections declared: what holding them all will cost.
        self.reserved_bytes = 0
        cfg = self.cfg
        # What gunicorn's chunked reader is given by each request (gunicorn's
        # Message works them out the same way), for HeldChunks.
        field_size = cfg.limit_request_field_size
        if field_size <= 0:
            field_size = DEFAULT_MAX_HEADERFIELD_SIZE
        fields = cfg.limit_request_fields
        if fields <= 0 or fields > MAX_HEADERS:
            fields = MAX_HEADERS
        self.chunk_limits = SimpleNamespace(
            limit_request_field_size=field_size,
            max_buffer_headers=min(HeldChunks.MAX_TRAILERS, fields * (field_size + 2) + 4),
            parse_headers=refuse_trailers,
        )
        # The largest head gunicorn's limits allow: past it, gunicorn refuses it.
        self.max_head_bytes = (
            (cfg.limit_request_line or 8190)
            + (cfg.limit_request_fields or 32768) * ((cfg.limit_request_field_size or 8190) + 2)
            + 4
        )
        super().init_process()

    def enqueue_req(self, conn):
        if getattr(conn, "whole", False) or self.cfg.is_ssl:
            conn.whole = False
            return super().enqueue_req(conn)
        if conn.parser is None and negotiation.prior_knowledge_allowed(self.cfg, conn.client):
            return super().enqueue_req(conn)
        self.hold(conn)

    def hold(self, conn):
        """Watch ``conn`` in the event loop until its next request is whole."""
        # Bytes a thread already read past the last request belong to the next one.
        ahead = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        held = Held(ahead, time.monotonic() + self.head_timeout_secs)
        self.held[conn] = held
        self.held_bytes += len(ahead)
        conn.sock.setblocking(False)
        # A kept-alive connection turned readable (and most new ones) has its
        # request in the socket already: read it now, not one loop turn later.
        if self.advance(conn, held) or self.take_arrived(conn, held):
            return
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_held_readable, conn))
        held.watched = True

    def on_held_readable(self, conn, sock):
        self.take_arrived(conn, self.held[conn])

    def take_arrived(self, conn, held) -> bool:
        """Read what has arrived for ``conn``; True once it left the loop's hands
        (handed to a thread, answered, or gone)."""
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:  # the client went away
            self.release(conn)
            self.drop(conn)
            return True
        held.data += data
        self.held_bytes += len(data)
        return self.advance(conn, held)

    def advance(self, conn, held) -> bool:
        """Hand ``conn`` to a thread if its request is whole (or past waiting for); say if so."""
        if held.head_end < 0:
            start = max(held.scanned - 3, 0)
            crlf = held.data.find(b"\r\n\r\n", start)
            lf = held.data.find(b"\n\n", start)
            ends = [i + n for i, n in ((crlf, 4), (lf, 2)) if i >= 0]
            held.scanned = len(held.data)
            if not ends:
                if len(held.data) > self.max_head_bytes:
                    return self.hand_over(conn, held)  # gunicorn answers 431/414
                return False
            held.head_end = min(ends)
            head = bytes(held.data[: held.head_end])
            if self.refuse_at_head(conn, head):
                return True
            length, unsure, expect, chunked = declared_body(head)
            if not length and not unsure and not chunked:
                return self.hand_over(conn, held)
            if unsure or self.reserved_bytes + (length or 0) > self.hold_budget_bytes:
                # Odd bodies, or past what the worker may hold: the thread reads
                # the body, but holds no set-up slot meanwhile.
                conn.body_pending = True
                return self.hand_over(conn, held)
            if chunked:
                return self._hold_chunked(conn, held, head, expect)
            if length > self.max_body_bytes:
                # Refused from the main loop: no thread waits for a body it will refuse.
                return self._too_large(conn)
            held.need = held.head_end + length
            held.reserved = length
            self.reserved_bytes += length
            held.deadline = time.monotonic() + self.body_timeout_secs
            if (
                expect
                and len(held.data) < held.need
                and head.split(b"\n", 1)[0].rstrip().endswith(b"HTTP/1.1")
            ):
                self._continue(conn, held, head)
        if held.chunks is not None:
            return self._advance_chunked(conn, held)
        if len(held.data) >= held.need:
            return self.hand_over(conn, held)
        return False

    def _hold_chunked(self, conn, held, head: bytes, expect: bool) -> bool:
        """Hold a chunked body too, until gunicorn's reader has all of it: its size
        is known only then, and a client dripping it must hold no thread meanwhile."""
        held.deadline = time.monotonic() + self.body_timeout_secs
        if expect and len(held.data) == held.head_end:
            self._continue(conn, held, head)
        held.chunks = HeldChunks(self.chunk_limits, self.max_body_bytes)
        held.fed = held.head_end
        return self._advance_chunked(conn, held)

    def _advance_chunked(self, conn, held) -> bool:
        new = bytes(held.data[held.fed :])
        held.fed = len(held.data)
        # What a chunked body holds counts against the budget as it arrives.
        held.reserved += len(new)
        self.reserved_bytes += len(new)
        chunks = held.chunks
        chunks.feed(new)
        # Tiny chunks are mostly framing: the raw bytes are bounded too.
        if chunks.too_large or held.fed - held.head_end > 2 * self.max_body_bytes:
            return self._too_large(conn)
        refusal = chunks.refusal()
        if refusal is not None:
            return self.refuse(conn, *refusal)
        if chunks.done:
            return self.hand_over(conn, held)
        if self.reserved_bytes > self.hold_budget_bytes:
            conn.body_pending = True  # as for any body past the budget: a thread reads it
            return self.hand_over(conn, held)
        return False

    def _continue(self, conn, held, head: bytes) -> None:
        """Send ``100 Continue`` now, and take the Expect out of the head: gunicorn
        must not send a second one when a thread reads the request."""
        try:
            conn.sock.send(CONTINUE)  # 25 bytes into an empty send buffer
        except OSError:
            pass
        stripped = strip_expect(head)
        cut = held.head_end - len(stripped)
        held.data[: held.head_end] = stripped
        held.head_end -= cut
        held.need -= cut
        self.held_bytes -= cut

    def refuse_at_head(self, conn, head: bytes) -> bool:
        """Answer ``conn`` now, from its head alone, if a class after this one in the
        MRO says so (SheddingMixin, when nothing could serve it); else keep holding."""
        later = getattr(super(), "refuse_at_head", None)
        return later(conn, head) if later is not None else False

    def hand_over(self, conn, held) -> bool:
        """Give ``conn`` to a thread with what was read replayed to gunicorn's parser."""
        self.release(conn)
        # What shedding looks at (the socket no longer holds it): the request
        # line, and the client's X-Request-ID (not the whole head: a kept-alive
        # connection would carry a copy of its last one, up to ~800 KiB).
        conn.first_bytes = bytes(held.data[:PEEK_BYTES])
        conn.given_request_id = client_request_id(held.data[: max(held.head_end, 0)])
        conn.init()  # makes the parser; no I/O for plain HTTP/1
        if held.chunks is not None:
            conn.parser.unreader = HeldUnreader(conn.sock, bytes(held.data))
        else:
            conn.parser.unreader.unread(held.data)
        conn.data_ready = True  # gthread must not wait for the socket: the bytes are here
        conn.whole = True
        self.enqueue_req(conn)
        return True

    def release(self, conn):
        """Stop watching ``conn`` (before a thread or a close can touch its socket)."""
        held = self.held.pop(conn)
        self.held_bytes -= len(held.data)
        self.reserved_bytes -= held.reserved
        if held.chunks is not None:
            held.chunks.close()
        # Most requests are whole at once and never watched: unregistering one
        # would raise a KeyError whose message formats the socket (getsockname).
        if held.watched:
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError):
                pass

    def refuse(self, conn, status: int, reason: str, mesg: str) -> bool:
        """Answer a held ``conn`` from the loop with chatd's JSON error, and close it."""
        self.release(conn)
        self.drop(conn, json_error(status, reason, mesg))
        return True

    def _too_large(self, conn) -> bool:
        mesg = f"request body is larger than max_request_bytes ({self.max_body_bytes} bytes)"
        return self.refuse(conn, 413, "Content Too Large", mesg)

    def drop(self, conn, answer: bytes = b""):
        """Close a released ``conn``, first sending ``answer`` if the socket takes it now."""
        if answer:
            try:
                conn.sock.send(answer)
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        if not self.alive:
            # Stopping: a connection that sent nothing goes now, the rest get the
            # linger gthread gives its kept-alive ones, not their whole deadlines.
            for conn, held in list(self.held.items()):
                if not held.data:
                    self.release(conn)
                    self.drop(conn)
                else:
                    held.deadline = min(held.deadline, now + STOP_KEEPALIVE_LINGER)
        late = [conn for conn, held in self.held.items() if held.deadline <= now]
        for conn in late:
            waiting = "body" if self.held[conn].head_end >= 0 else "head"
            self.refuse(
                conn, 408, "Request Timeout", f"the request {waiting} did not arrive in time"
            )


# What a request thread returns for a connection it gave to the relay.
HANDED_TO_RELAY = object()


class Handoff:
    """What the worker answers gunicorn with for a stream the relay carries on.

    gunicorn iterates it on the request thread: that sends the response head,
    notes the stream on its connection, and yields nothing, so gunicorn writes
    nothing more (not even the last chunk: the relay does). The relay gets the
    stream from the main loop once the thread is done with the connection.
    """

    def __init__(self, worker, conn, body, response, begin):
        self.worker = worker
        self.conn = conn
        self.body = body
        self.response = response  # gunicorn's
        self.begin = begin
        self.handed = False

    def __iter__(self):
        response = self.response
        keep = not response.should_close()
        response.send_headers()
        chunked, response.chunked = response.chunked, False
        self.handed = True
        self.worker.hand_to_relay(self.conn, (self.body, chunked, keep, self.begin))
        return iter(())

    def close(self):
        if not self.handed:  # the head could not be sent: the client left
            close = getattr(self.body, "close", None)
            if close is not None:
                close()


class StreamRelay:
    """For a gthread ThreadWorker: streams go on in one event loop, not a thread each.

    When the app answers a stream it can relay (``environ[RELAYED]`` set; see
    :mod:`chatd.streaming`), the request thread sends the head and notes the
    stream on its connection; when the thread has finished with it, the main
    loop gives the connection to this worker's :class:`~chatd.relay.Relay`
    (never while the thread may still touch the socket). The connection stays
    counted in ``nr_conns`` until the stream ends (so a stopping worker waits
    for it, up to graceful_timeout); then the main loop keeps it alive for the
    next request or closes it, as gthread would have.
    """

    def init_process(self):
        self._relay_local = threading.local()
        self.relay = Relay()
        self.relay.on_death = self._relay_died
        self.relay.start()
        super().init_process()

    def load_wsgi(self):
        super().load_wsgi()
        app = self.wsgi
        local = self._relay_local
        # TLS and HTTP/2 connections are not relayed (the relay writes HTTP/1.x
        # chunks to a plain socket); gunicorn serves them on their thread.
        relayable = not self.cfg.is_ssl

        def relaying(environ, start_response):
            conn = local.conn
            environ[CAN_RELAY] = relayable and not getattr(conn, "is_http2", False)
            body = app(environ, start_response)
            begin = environ.get(RELAYED)
            if begin is None:
                return body
            return Handoff(self, conn, body, start_response.__self__, begin)

        relaying.__wrapped__ = app
        self.wsgi = relaying

    def handle(self, conn):
        local = self._relay_local
        local.conn = conn
        conn.relay_job = None
        result = super().handle(conn)
        return HANDED_TO_RELAY if conn.relay_job is not None else result

    def hand_to_relay(self, conn, job) -> None:
        """(A request thread.) ``conn``'s stream goes to the relay once the thread is done."""
        conn.relay_job = job
        self.relay.count(1)  # counted at the door from now

    def finish_request(self, conn, fs):
        job = getattr(conn, "relay_job", None)
        if job is not None:
            conn.relay_job = None
            body, chunked, keep, begin = job
            if not fs.cancelled() and fs.exception() is None:
                # (Main loop.) The thread is done with the connection: the relay's now.
                done = partial(self._relay_ended, conn, keep)
                self.relay.add(conn.sock, body, chunked, done, begin, counted=True)
                return
            # The thread failed after the head went out: the stream ends here.
            self.relay.count(-1)
            try:
                body.close()
            except Exception:
                log.exception("closing a stream that was not relayed failed")
        super().finish_request(conn, fs)

    def _relay_ended(self, conn, keep: bool, whole: bool) -> None:
        """(The relay's thread.) The stream on ``conn`` ended."""
        self.method_queue.defer(self._after_relay, conn, keep and whole)

    def _after_relay(self, conn, keep: bool) -> None:
        # gthread's own ending of a request: keep the connection alive, or close it.
        done = futures.Future()
        done.set_result(keep)
        super().finish_request(conn, done)

    def _relay_died(self) -> None:
        """(The relay's thread, as it ends.) Stop: gunicorn starts a new worker."""
        self.alive = False


class ChatdWorker(WholeRequests, SheddingMixin, StreamRelay, ThreadWorker):
    """gthread: whole requests first, then shedding at the door, streams relayed,
    and gunicorn's own error answers in chatd's JSON shape; named by gunicorn.conf.py.

    The order matters: a request is held until whole (a slow client holds no
    thread and no set-up slot), shed from its head when nothing can serve it,
    and only then counted and given a thread.
    """

    def init_process(self):
        # This process is a chatd worker: its server errors are JSON. Replaced
        # here, not at import, because the master imports this module too.
        util.write_error = write_json_error
        # The relay's thread gives up the GIL at each send and recv; a set-up
        # thread that takes it then keeps it for the whole switch interval
        # (5 ms by default), while every open stream's pieces wait.
        sys.setswitchinterval(SWITCH_INTERVAL)
        super().init_process()

    def notify(self):
        now = time.monotonic()
        if now >= self._next_notify:
            self._next_notify = now + HEARTBEAT_SECS
            super().notify()

    def is_parent_alive(self):
        now = time.monotonic()
        if now < self._next_parent_check:
            return True
        self._next_parent_check = now + HEARTBEAT_SECS
        return super().is_parent_alive()

    _next_notify = 0.0
    _next_parent_check = 0.0

    def load_wsgi(self):
        super().load_wsgi()
        # What the app built at start-up lives as long as the worker: out of
        # the collector's sight. And full collections rarer: one walks every
        # open stream's objects, and at a thousand streams it held the GIL
        # for 90-150 ms, a gap in every stream (make bench --streams).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
