"""chatd.worker ~~~ gunicorn's gthread worker: JSON errors, and whole requests only.

Two changes to gthread, each its own piece:

- gunicorn answers a request it cannot parse (a bad request line or header,
  a URI or header block over its limits) itself, before chatd sees it, and
  writes that answer as an HTML page. Here those answers carry chatd's JSON
  error body, so every non-2xx a client gets from chatd's own server parses
  the same way (:func:`write_json_error`).
- gthread hands a connection to a thread as soon as it is readable, and that
  thread then blocks reading a head or body the client may drip one byte a
  second: 128 such clients hold every thread. :class:`WholeRequests` keeps a
  connection in the worker's event loop (non-blocking reads, one selector)
  until its whole head, and a body of declared length, has arrived, and only
  then gives it to a thread, with the bytes read replayed to gunicorn's parser.
  A client that takes longer than ``head_timeout_secs`` for its head or
  ``body_timeout_secs`` for its body gets a JSON 408 and is closed.
"""

from __future__ import annotations

import selectors
import socket
import time
from functools import partial

from gunicorn import util
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import ThreadWorker

from chatd import codec

# gunicorn's statuses and the error types chatd gives them.
ERROR_TYPES = {
    400: "invalid_request",
    403: "forbidden",
    408: "request_timeout",
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

    __slots__ = ("data", "head_end", "need", "deadline", "scanned")

    def __init__(self, data: bytes, deadline: float):
        self.data = bytearray(data)
        self.head_end = -1  # index just past the blank line, once seen
        self.need = 0  # bytes that make the request whole (head + declared body)
        self.deadline = deadline
        self.scanned = 0  # where to resume looking for the blank line


def declared_body(head: bytes) -> tuple[int | None, bool, bool]:
    """(Content-Length or None, chunked or otherwise unsure, Expect: 100-continue) of a head.

    Only enough to know how much more to wait for: gunicorn's parser still
    judges the request. Anything odd (two lengths, a bad one) is "unsure",
    and the connection is handed over at once for gunicorn to refuse.
    """
    length, unsure, expect = None, False, False
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
            unsure = True
        elif name == b"expect" and value.lower() == b"100-continue":
            expect = True
    return length, unsure, expect


class WholeRequests(ThreadWorker):
    """gthread that gives a thread a connection only once its request is whole.

    Every way gthread gives a connection to a thread (a new connection, a
    kept-alive one turning readable, read-ahead left after a response) goes
    through ``enqueue_req``; this holds the connection in the event loop first.
    TLS and HTTP/2 prior knowledge (neither used by chatd) go straight through.
    A chunked body, or one over ``max_body_bytes`` (for the app's 413), is
    handed over after the head; so is any body while the worker already holds
    ``hold_budget_bytes`` in all.
    """

    # Set from gunicorn.conf.py (in the master, so a reload sets them again).
    head_timeout_secs = 10.0
    body_timeout_secs = 30.0
    max_body_bytes = 4 << 20
    hold_budget_bytes = 64 << 20

    def init_process(self):
        self.held: dict = {}
        self.held_bytes = 0
        cfg = self.cfg
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
        if not self.advance(conn, held):
            self.poller.register(
                conn.sock, selectors.EVENT_READ, partial(self.on_held_readable, conn)
            )

    def on_held_readable(self, conn, sock):
        held = self.held[conn]
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self.release(conn)
            self.drop(conn)
            return
        held.data += data
        self.held_bytes += len(data)
        self.advance(conn, held)

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
            length, unsure, expect = declared_body(bytes(held.data[: held.head_end]))
            if unsure or not length:
                return self.hand_over(conn, held)
            if length > self.max_body_bytes or self.held_bytes + length > self.hold_budget_bytes:
                return self.hand_over(conn, held)
            held.need = held.head_end + length
            held.deadline = time.monotonic() + self.body_timeout_secs
            if expect and len(held.data) < held.need:
                try:
                    conn.sock.send(CONTINUE)  # 26 bytes into an empty send buffer
                except OSError:
                    pass
        if len(held.data) >= held.need:
            return self.hand_over(conn, held)
        return False

    def hand_over(self, conn, held) -> bool:
        """Give ``conn`` to a thread with what was read replayed to gunicorn's parser."""
        self.release(conn)
        conn.init()  # makes the parser; no I/O for plain HTTP/1
        conn.parser.unreader.unread(held.data)
        conn.data_ready = True  # gthread must not wait for the socket: the bytes are here
        conn.whole = True
        self.enqueue_req(conn)
        return True

    def release(self, conn):
        """Stop watching ``conn`` (before a thread or a close can touch its socket)."""
        held = self.held.pop(conn)
        self.held_bytes -= len(held.data)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError):
            pass  # not registered yet: the request was whole at once

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
        late = [conn for conn, held in self.held.items() if held.deadline <= now]
        for conn in late:
            waiting = "body" if self.held[conn].head_end >= 0 else "head"
            self.release(conn)
            mesg = f"the request {waiting} did not arrive in time"
            self.drop(conn, json_error(408, "Request Timeout", mesg))


class ChatdWorker(WholeRequests):
    """gthread, whole requests only, with gunicorn's own error answers in chatd's JSON shape."""

    def init_process(self):
        # This process is a chatd worker: its server errors are JSON. Replaced
        # here, not at import, because the master imports this module too.
        util.write_error = write_json_error
        super().init_process()
