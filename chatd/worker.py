"""chatd.worker ~~~ gunicorn's gthread worker, shedding at the door what it cannot serve.

gthread hands every accepted connection to its thread pool; with every thread
busy the rest wait in the pool's queue, unanswered, for as long as the streams
ahead of them last. :class:`SheddingMixin` looks at each connection before it
goes to the pool: when no thread is free (``threads`` less the ones kept for
/health) or :mod:`chatd.admission` says the CPU, descriptors or memory ran out,
it answers 503 with ``Retry-After`` from the main loop, without a thread and
without reading the request's body; health checks still get the kept threads.

A call's set-up (parsing, validating, routing, sending the upstream call,
reading its head and first event) costs far more CPU than relaying a piece. A
burst of thousands of calls set up all at once shares the core among all of
them: every one starts late, and the streams already running miss their pace.
So at most MAX_SETUPS calls per worker are in set-up at once; the next ones
wait in order, and one that waited longer than MAX_SETUP_WAIT (the CPU cannot
keep up) is shed. A set-up ends when the upstream call goes out
(:func:`chatd.admission.set_up_done`), or for a stream when the app returns
(its first event read) or SENT_GRACE after the call went out, whichever is
first: then the upstream is thinking, the thread waits without the CPU, and a
slow model must not hold the slot.

It also sets the stack size of the threads the pool starts (STACK_SIZE): one
thread per open stream, thousands of them.

A mixin, so another worker subclass can take it too; gunicorn.conf.py names
:class:`ChatdWorker`.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import selectors
import socket
import threading
import time
from collections import deque
from concurrent import futures
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

from chatd import admission, codec

log = logging.getLogger("chatd.worker")

# A relay thread's deepest stack is Flask -> chatd -> requests -> http.client,
# a few dozen frames (Python frames themselves live off the C stack since 3.11):
# 512 KiB is ample, and thousands of threads need not reserve 8 MiB each.
STACK_SIZE = 512 * 1024
# Served with a kept thread even while calls are shed: load balancers and
# operators must see an overloaded chatd as up, and why.
ALWAYS_SERVED = (b"GET /health", b"HEAD /health", b"GET /metrics")
# Enough to see the request line; what the client sent of the body is drained,
# up to DRAIN_BYTES, so that closing does not reset the connection under the 503.
PEEK_BYTES = 64
DRAIN_BYTES = 256 * 1024
# Calls in set-up at once per worker (the rest wait their turn, in order), and
# how long one may wait before it is shed: the scheduling delay chatd accepts.
MAX_SETUPS = 4
MAX_SETUP_WAIT = 1.0
SENT_GRACE = 0.01
# While calls wait for a set-up slot, the main loop is woken this often.
SETUP_TICK = 0.01
IDLE_TICK = 0.1
# The request threads' name in the OS, so operators (and tests) can count them.
THREAD_NAME = b"chatd-request"
PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True)
# Connections accepted per wake-up of the main loop, at most (a few, so one
# worker does not take a whole burst from the other).
ACCEPT_BATCH = 16
# Sheds are logged as one summary line at most this often.
LOG_EVERY_SECONDS = 10.0


def name_thread(name: bytes) -> None:
    """Give this thread its name in the OS (top -H, /proc/<pid>/task/*/comm)."""
    try:
        _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)
    except (AttributeError, OSError):
        pass  # not Linux: only the name is missing


def shed_answer(reason: str) -> bytes:
    """The whole 503 answer, in chatd's error envelope."""
    body = codec.dumps({"error": {"type": "overloaded", "message": reason, "code": "overloaded"}})
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


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
                raise
            self.nr_conns += 1
            client_sock.setblocking(True)
            self.enqueue_req(TConn(self.cfg, client_sock, client_addr, listener.getsockname()))

    def enqueue_req(self, conn):
        threads = self.cfg.threads
        # With nothing in flight, shedding frees nothing: the first call always runs.
        if (
            self.busy >= threads - admission.RESERVED_THREADS
            or (self.pressure.reason and self.busy)
            or self.setups >= MAX_SETUPS
        ):
            line = self._request_line(conn)
            if line is None:
                return  # waiting for the request, or gone
            if line.startswith(ALWAYS_SERVED) and self.busy < threads:
                self._start(conn, setup=False)
            elif self.busy >= threads - admission.RESERVED_THREADS or (
                self.pressure.reason and self.busy
            ):
                self._shed(conn)
            else:
                self.waiting.append((conn, time.monotonic()))
            return
        self._start(conn)

    def _start(self, conn, setup: bool = True) -> None:
        if setup:
            with self._setup_lock:
                self.in_setup[conn] = None
        self.busy += 1
        super().enqueue_req(conn)

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
            if now - since > MAX_SETUP_WAIT or (self.pressure.reason and self.busy):
                self._shed(conn, f"no call set up within {MAX_SETUP_WAIT:g} s: CPU saturated")
            else:
                self._start(conn)

    def murder_pending(self):
        super().murder_pending()
        # Those that waited too long go, even while no set-up finishes.
        now = time.monotonic()
        while self.waiting and now - self.waiting[0][1] > MAX_SETUP_WAIT:
            conn, _ = self.waiting.popleft()
            self._shed(conn, f"no call set up within {MAX_SETUP_WAIT:g} s: CPU saturated")

    def finish_request(self, conn, fs):
        self.busy -= 1
        # The app was never reached (the client left, a bad request): its slot frees.
        self._set_up_done(conn)
        super().finish_request(conn, fs)

    def _request_line(self, conn) -> bytes | None:
        """The start of the request, or None: then the connection waits on the poller
        for its request (as gthread's deferred connections do), or was closed."""
        sock = conn.sock
        try:
            sock.setblocking(False)
            start = sock.recv(PEEK_BYTES, socket.MSG_PEEK)
        except BlockingIOError:
            start = None
        except OSError:
            start = b""
        if start:
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

    def _shed(self, conn, reason: str | None = None) -> None:
        reason = reason or self.pressure.reason or f"chatd has no free thread of {self.cfg.threads}"
        sock = conn.sock
        try:
            drained = 0
            while drained < DRAIN_BYTES:
                data = sock.recv(65536)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass  # nothing more has arrived (or the client left)
        try:
            sock.send(shed_answer(reason))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.nr_conns -= 1
        conn.close()
        self.shed += 1
        now = time.monotonic()
        if now - self._shed_logged >= LOG_EVERY_SECONDS:
            log.warning("shed %d connections with 503 (last: %s)", self.shed, reason)
            self.shed = 0
            self._shed_logged = now


class ChatdWorker(SheddingMixin, ThreadWorker):
    """gthread, shedding at the door; named by gunicorn.conf.py."""
