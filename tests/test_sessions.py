"""Provider sessions: the head watchdog, the lean header parser, one write per request."""

from __future__ import annotations

import email.parser
import http.client
import io
import socket
import time
from types import SimpleNamespace

import pytest

from chatd import sessions
from chatd.sessions import HeadWatchdog, parse_headers
from tests.fakes import FakeOllama


def test_a_call_past_its_deadline_has_its_socket_shut_and_is_told_so():
    watchdog = HeadWatchdog()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(5)
        token = watchdog.watch(time.monotonic() + 0.2, SimpleNamespace(sock=ours))
        started = time.monotonic()
        assert ours.recv(1) == b""  # blocked until the watchdog shut the socket
        assert 0.15 <= time.monotonic() - started < 2
        assert watchdog.done(token) is True


def test_a_call_done_in_time_keeps_its_socket():
    watchdog = HeadWatchdog()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        token = watchdog.watch(time.monotonic() + 0.3, SimpleNamespace(sock=ours))
        assert watchdog.done(token) is False
        time.sleep(0.3 + 2 * HeadWatchdog.TICK)  # past the deadline, no longer watched
        theirs.sendall(b"x")
        ours.settimeout(2)
        assert ours.recv(1) == b"x"


HEADS = [
    b"Server: nginx\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n",
    b"A:b\r\nX-Y:  spaced value  \r\nX-Y: twice\r\n\n",
    b"Set-Cookie: a=1; Path=/\r\nDate: Wed, 25 Nov 2026 18:00:00 GMT\r\nEmpty:\r\n\r\n",
    b"X-Latin: caf\xe9\r\n\r\n",
    b"\r\n",
    b"",  # the stream ended before any header
    b"A: b\r\n",  # ... or before the blank line
    # Shapes the fast path leaves to the email parser:
    b"A: b\r\n folded\r\n\r\n",
    b"Bad Name: x\r\nA: b\r\n\r\n",
    b"no colon here\r\nA: b\r\n\r\n",
    b"A: b\rc\r\n\r\n",
    b"From nobody\r\nA: b\r\n\r\n",
    b"A\x01: b\r\n\r\n",
    b"A: b\r\r\nContent-Length: 2\r\n\r\n",  # a bare CR ends the head for the email parser
    b"A:\r\r\n\r\n",
    b"A: b",  # the stream ended mid-line
    b"A: b\r\nB: c",
]


@pytest.mark.parametrize("head", HEADS)
def test_the_lean_header_parser_reads_a_head_as_http_client_does(head):
    ours, stdlib = parse_headers(io.BytesIO(head)), http.client.parse_headers(io.BytesIO(head))
    assert type(ours) is type(stdlib)
    assert ours.items() == stdlib.items()
    assert ours.get_payload() == stdlib.get_payload()
    assert [type(d) for d in ours.defects] == [type(d) for d in stdlib.defects]
    assert ours.get("content-length") == stdlib.get("content-length")


def test_a_plain_head_is_read_without_the_email_parser(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the email parser was used")

    monkeypatch.setattr(email.parser.Parser, "parsestr", refuse)
    message = parse_headers(io.BytesIO(HEADS[0] + b'{"a": 1}'))
    assert message["content-length"] == "3"


def test_a_response_reads_its_head_with_the_lean_parser(monkeypatch):
    """LeanHTTPResponse.begin is the stdlib's, with parse_headers rebound to ours."""

    def refuse(*args, **kwargs):
        raise AssertionError("the email parser was used")

    monkeypatch.setattr(email.parser.Parser, "parsestr", refuse)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok"
        )
        response = sessions.LeanHTTPResponse(ours, method="POST")
        response.begin()
        assert (response.status, response.getheader("x-a"), response.read()) == (200, "1", b"ok")


def test_the_lean_header_parser_keeps_http_clients_limits():
    too_many = b"".join(b"X-%d: v\r\n" % i for i in range(http.client._MAXHEADERS + 1))
    with pytest.raises(http.client.HTTPException, match="more than"):
        parse_headers(io.BytesIO(too_many + b"\r\n"))
    with pytest.raises(http.client.LineTooLong):
        parse_headers(io.BytesIO(b"X: " + b"v" * http.client._MAXLINE + b"\r\n\r\n"))


class RecordingSocket:
    """Enough of a socket for http.client to send on: what each sendall got."""

    def __init__(self):
        self.writes: list[bytes] = []

    def settimeout(self, seconds):
        pass

    def sendall(self, data):
        self.writes.append(bytes(data))


def connection_writing(size: int | None):
    conn = sessions.HTTPConnection("127.0.0.1", 9)
    conn.sock = RecordingSocket()
    body = None if size is None else b"x" * size
    conn.request("POST" if body else "GET", "/api/chat", body=body, headers={"X-Id": "1"})
    return conn.sock.writes, body


def test_a_request_goes_out_in_one_write_head_and_body_together():
    writes, body = connection_writing(300)
    assert len(writes) == 1
    assert writes[0].startswith(b"POST /api/chat HTTP/1.1\r\n")
    assert writes[0].endswith(b"\r\n\r\n" + body)


def test_a_request_without_a_body_still_sends_its_head():
    writes, _ = connection_writing(None)
    assert len(writes) == 1
    assert writes[0].startswith(b"GET /api/chat HTTP/1.1\r\n") and writes[0].endswith(b"\r\n\r\n")


def test_a_large_body_is_not_copied_to_save_a_write():
    writes, body = connection_writing(sessions.ONE_WRITE_BYTES)
    assert len(writes) == 2
    assert writes[0].endswith(b"\r\n\r\n") and writes[1] == body


def test_a_provider_session_reads_answers_with_the_lean_response_over_a_real_socket():
    with FakeOllama() as fake:
        session = sessions.make_session({"X-Test": "1"}, pool_size=2)
        try:
            for _ in range(2):  # a new connection, then the pooled one
                response = session.post(fake.url + "/api/chat", data=b'{"model": "m"}')
                assert response.status_code == 200
                assert response.json()["message"]["content"] == "hello"
                assert type(response.raw._original_response) is sessions.LeanHTTPResponse
            assert fake.connections == 1
            assert [r.json for r in fake.requests] == [{"model": "m"}] * 2
        finally:
            session.close()
