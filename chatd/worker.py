"""chatd.worker ~~~ gunicorn's gthread worker, shedding at the door what it cannot serve.

gthread hands every accepted connection to its thread pool; with every thread
busy the rest wait in the pool's queue, unanswered, for as long as the streams
ahead of them last. :class:`SheddingMixin` looks at each connection before it
goes to the pool: when no thread is free (``threads`` less the ones kept for
/health) or :mod:`chatd.admission` says the CPU, descriptors or memory ran out,
it answers 503 with ``Retry-After`` from the main loop, without a thread and
without reading the request's body; health checks still get the kept threads.

It also sets the stack size of the threads the pool starts (STACK_SIZE): one
thread per open stream, thousands of them.

A mixin, so another worker subclass can take it too; gunicorn.conf.py names
:class:`ChatdWorker`.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from functools import partial

from gunicorn.workers.gthread import ThreadWorker

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
# Sheds are logged as one summary line at most this often.
LOG_EVERY_SECONDS = 10.0


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
        self.shed = 0
        self._shed_logged = time.monotonic()
        self.pressure = admission.pressure.start()
        super().init_process()

    def enqueue_req(self, conn):
        threads = self.cfg.threads
        # With nothing in flight, shedding frees nothing: the first call always runs.
        if self.busy >= threads - admission.RESERVED_THREADS or (
            self.pressure.reason and self.busy
        ):
            line = self._request_line(conn)
            if line is None:
                return  # waiting for the request, or gone
            if self.busy >= threads or not line.startswith(ALWAYS_SERVED):
                self._shed(conn)
                return
        self.busy += 1
        super().enqueue_req(conn)

    def finish_request(self, conn, fs):
        self.busy -= 1
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

    def _shed(self, conn) -> None:
        reason = self.pressure.reason or f"chatd has no free thread of {self.cfg.threads}"
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
