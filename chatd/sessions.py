"""chatd.sessions ~~~ One pooled, frozen ``requests.Session`` per provider.

Built once per worker at start-up and shared by its threads, so nothing here
may change after :func:`make_session` returns (psf/requests#2766).
"""

from __future__ import annotations

import email.parser
import http.client
import itertools
import re
import socket
import threading
import time
import types
from http.cookiejar import DefaultCookiePolicy

import requests
import urllib3.connection
from requests.adapters import HTTPAdapter
from requests.models import Response
from requests.structures import CaseInsensitiveDict

import chatd

# The deadline (time.monotonic()) for the current thread's next upstream answer
# to have sent its status line and headers; None: no deadline but the per-read one.
head_deadline = threading.local()


class HeadWatchdog:
    """Shuts the socket of an upstream call whose answer's head is late.

    requests' read timeout is per read, so an upstream that sends its status
    line and headers a byte at a time, each in time, could hold a thread for as
    long as it liked. (The body has its own total deadline, in the adapter.)
    One thread per process checks the calls waiting for a head every ``TICK``
    seconds; there are never more of them than threads.
    """

    TICK = 0.1

    def __init__(self):
        self._lock = threading.Lock()
        self._calls: dict[int, list] = {}  # token -> [deadline, connection, fired]
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, connection) -> int:
        token = next(self._tokens)
        with self._lock:
            self._calls[token] = [deadline, connection, False]
            if self._thread is None:  # started on first use: in the worker, after fork
                self._thread = threading.Thread(
                    target=self._run, name="chatd-head-watchdog", daemon=True
                )
                self._thread.start()
        return token

    def done(self, token: int) -> bool:
        """Stop watching; True if the deadline passed and the socket was shut."""
        # Under the lock: once this returns, the connection (soon back in its
        # pool, maybe lent to another call) is never shut on this call's behalf.
        with self._lock:
            return self._calls.pop(token)[2]

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self._lock:
                for call in self._calls.values():
                    if not call[2] and call[0] <= now:
                        call[2] = True
                        sock = call[1].sock
                        if sock is not None:
                            try:
                                sock.shutdown(socket.SHUT_RDWR)
                            except OSError:
                                pass


WATCHDOG = HeadWatchdog()


class _HeadDeadline:
    """Keeps an upstream answer's status line and headers within ``head_deadline``."""

    def getresponse(self, *args, **kwargs):
        deadline = getattr(head_deadline, "at", None)
        if deadline is None:
            return super().getresponse(*args, **kwargs)
        token = WATCHDOG.watch(deadline, self)
        try:
            response = super().getresponse(*args, **kwargs)
        except BaseException:
            if WATCHDOG.done(token):
                # urllib3 turns this into a read timeout, requests into Timeout.
                raise TimeoutError("the answer's head was not in by the deadline") from None
            raise
        if WATCHDOG.done(token):
            # A shut socket can look like the end of the headers: never trust this answer.
            response.close()
            raise TimeoutError("the answer's head was not in by the deadline")
        return response


# A header line as nearly every server sends it: a token, a colon, a value on
# one line. Any other line (folded, no colon, a name the email parser reads
# differently) sends the whole head to the stdlib parser.
_PLAIN_FIELD = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n]*)")


def parse_headers(fp, _class=http.client.HTTPMessage) -> http.client.HTTPMessage:
    """http.client.parse_headers, with the same limits and the same message, built
    without the email package's parser: that was ~20 µs of every upstream call."""
    lines = http.client._read_headers(fp)  # enforces _MAXLINE and _MAXHEADERS
    fields = []
    for line in lines[:-1]:  # the last is the blank line, or the end of the stream
        # Exactly one line ending off: any other CR (the email parser ends a line
        # at a bare CR) leaves a line the pattern refuses.
        if line.endswith(b"\r\n"):
            line = line[:-2]
        elif line.endswith(b"\n"):
            line = line[:-1]
        match = _PLAIN_FIELD.fullmatch(line.decode("iso-8859-1"))
        if match is None:
            text = b"".join(lines).decode("iso-8859-1")
            return email.parser.Parser(_class=_class).parsestr(text)
        fields.append(match.groups())
    message = _class()
    message._headers = fields
    message.set_payload("")  # what the email parser leaves after a blank line
    return message


class LeanHTTPResponse(http.client.HTTPResponse):
    """http.client's response, reading its headers with :func:`parse_headers`.

    ``begin`` is the stdlib's own code, looking ``parse_headers`` up in a copy
    of http.client's globals where the name means ours: every other step of
    reading a status line and a head stays as the stdlib does it.
    """

    _code = http.client.HTTPResponse.begin.__code__
    # Only while the stdlib's begin is what this was written against: a plain
    # function that calls parse_headers by name (else it stays the stdlib's).
    if not _code.co_freevars and "parse_headers" in _code.co_names:
        begin = types.FunctionType(_code, {**vars(http.client), "parse_headers": parse_headers})
    del _code


# Heads and bodies up to this size go out in one write; a larger body is not
# copied just to save one system call.
ONE_WRITE_BYTES = 64 * 1024


class _OneWrite:
    """Sends a request's head and body in one write.

    urllib3 sends the head (from ``endheaders``) and then the body, two
    ``sendall`` calls, two segments and two GIL hand-offs per call; here the
    head waits for the body's first write and they go out together.
    """

    _head: bytes | None = None  # b"": holding, nothing yet; None: not holding

    def request(self, *args, **kwargs):
        self._head = b""
        try:
            super().request(*args, **kwargs)
        finally:
            head, self._head = self._head, None
        if head:  # no body followed
            super().send(head)

    def send(self, data):
        head = self._head
        if head is None:
            return super().send(data)
        if not head and isinstance(data, bytes):
            self._head = data
            return None
        self._head = None
        if isinstance(data, bytes) and len(head) + len(data) <= ONE_WRITE_BYTES:
            return super().send(head + data)
        super().send(head)
        return super().send(data)


class HTTPConnection(_OneWrite, _HeadDeadline, urllib3.connection.HTTPConnection):
    response_class = LeanHTTPResponse


class HTTPSConnection(_OneWrite, _HeadDeadline, urllib3.connection.HTTPSConnection):
    response_class = LeanHTTPResponse


def user_agent() -> str:
    # Honest and stable: Kimi filters clients by User-Agent and treats
    # impersonating another tool as a violation.
    return f"chatd/{chatd.__version__}"


class UpstreamAdapter(HTTPAdapter):
    """requests' HTTPAdapter, minus the per-call work a provider session never needs.

    Each chatd session talks to one origin, with no proxy and no cookies, so
    the pool lookup and the path can be worked out once per URL, and responses
    are built without cookie extraction or charset sniffing. ``send`` itself is
    requests' own (and what the ``responses`` library mocks in tests).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._pools: dict[str, object] = {}
        self._paths: dict[str, str] = {}

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        if proxies:
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        origin = request.url.split("/", 3)[:3]
        key = "/".join(origin)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = super().get_connection_with_tls_context(
                request, verify, proxies, cert
            )
            pool.ConnectionCls = HTTPSConnection if key.startswith("https") else HTTPConnection
        return pool

    def request_url(self, request, proxies):
        if proxies:
            return super().request_url(request, proxies)
        path = self._paths.get(request.url)
        if path is None:
            path = self._paths[request.url] = request.path_url
        return path

    def build_response(self, req, resp) -> Response:
        response = Response()
        response.status_code = resp.status
        response.headers = CaseInsensitiveDict(resp.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url
        response.request = req
        response.connection = self
        return response

    def close(self) -> None:
        self._pools.clear()
        super().close()


def make_session(headers: dict[str, str], pool_size: int) -> requests.Session:
    """Return a session with ``headers`` set once and a pool of ``pool_size`` connections."""
    session = requests.Session()
    # Proxies, .netrc and CA bundles from the environment would be looked up
    # on every call; chatd takes none of them implicitly.
    session.trust_env = False
    # Upstream cookies must not leak from one caller to the next.
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    session.headers.clear()
    session.headers.update(
        {
            "User-Agent": user_agent(),
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            "Content-Type": "application/json",
            **headers,
        }
    )
    # One pool per provider host, as large as the threads that may share it;
    # retries are chatd's decision, never urllib3's.
    adapter = UpstreamAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
