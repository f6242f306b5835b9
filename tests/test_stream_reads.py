"""A stream read straight from its socket (chatd.adapters.httpbody), over TLS and
plain TCP, gzip or not, on a request thread and on the relay.

The upstream here is a small server of the test's own, on loopback, speaking
Ollama's NDJSON stream with a self-signed certificate made by ``openssl``. Its
pieces come apart (a pause between them) and one piece is larger than a TLS
record, so the reader meets half-arrived records and chunks.
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import subprocess
import threading
import time
import zlib

import pytest

from chatd.adapters.ollama_native import OllamaChatAdapter
from chatd.errors import UpstreamError
from chatd.neutral import ChatRequest
from chatd.relay import Relay
from tests.conftest import make_wire_adapter
from tests.fakes import FakeOllama

WAIT = 10.0
BIG = "x" * 50_000  # larger than a TLS record (16 KiB) and than one read
PIECES = ["Hel", "lo", BIG, " there"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


class StreamServer:
    """Answers each POST with the NDJSON stream of PIECES, chunked, a pause between
    pieces; ``coding`` "gzip" compresses it; ``framing`` "length" or "close"
    frames it by Content-Length or by closing instead of chunks."""

    def __init__(
        self,
        tls: tuple | None = None,
        coding: str = "",
        framing: str = "chunked",
        keep_alive: bool = False,
        end_delay: float = 0.0,
    ):
        self.coding = coding
        self.framing = framing
        self.keep_alive = keep_alive
        self.end_delay = end_delay  # between the last piece and the body's end
        self.connections = 0
        self.context = None
        if tls:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(*map(str, tls))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join(WAIT)
        self.listener.close()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._answer, args=(sock,), daemon=True).start()

    def _answer(self, sock):
        try:
            sock.settimeout(WAIT)
            if self.context:
                sock = self.context.wrap_socket(sock, server_side=True)
            for _ in range(10):  # requests on this connection, at most
                head = b""
                while b"\r\n\r\n" not in head:
                    data = sock.recv(65536)
                    if not data:
                        return
                    head += data
                head, _, body = head.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += sock.recv(65536)
                lines = FakeOllama().stream_events(json.loads(body), PIECES)
                self._send(sock, lines)
                if not self.keep_alive:
                    return
        except OSError:
            pass
        finally:
            sock.close()

    def _send(self, sock, lines):
        headers = ["HTTP/1.1 200 OK", "Content-Type: application/x-ndjson"]
        pack = None
        if self.coding:
            headers.append(f"Content-Encoding: {self.coding}")
            pack = zlib.compressobj(wbits=31)  # gzip
            lines = [pack.compress(line) + pack.flush(zlib.Z_SYNC_FLUSH) for line in lines]
        if self.framing == "chunked":
            headers.append("Transfer-Encoding: chunked")
            sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
            for line in lines[:-1]:
                time.sleep(0.05)
                sock.sendall(b"%x\r\n%s\r\n" % (len(line), line))
            time.sleep(0.05)
            last = b"%x\r\n%s\r\n" % (len(lines[-1]), lines[-1])
            if self.end_delay:  # the format's end first, the body's a moment later
                sock.sendall(last)
                time.sleep(self.end_delay)
                sock.sendall(b"0\r\n\r\n")
            else:
                sock.sendall(last + b"0\r\n\r\n")
            return
        body = b"".join(lines)
        if self.framing == "length":
            headers.append(f"Content-Length: {len(body)}")
            if not self.keep_alive:
                headers.append("Connection: close")
        else:
            headers.append("Connection: close")
        sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        for i in range(0, len(body), 7000):
            time.sleep(0.01)
            sock.sendall(body[i : i + 7000])


def adapter_for(server: StreamServer, certificate):
    adapter = make_wire_adapter(OllamaChatAdapter, "ollama_cloud", server.url)
    transport = adapter._transport

    class Verifying:
        """The adapter's transport, trusting the test's own certificate."""

        def send(self, *args, **kwargs):
            return transport.send(*args, verify=str(certificate[0]), **kwargs)

    adapter._transport = Verifying()
    return adapter


def assert_stream_fails(server: StreamServer, certificate, match: str) -> None:
    """The stream ``server`` sends opens, then fails while it is read."""
    with server:
        adapter = adapter_for(server, certificate)
        stream = adapter.open_stream(chat_request(), "m")
        try:
            with pytest.raises(UpstreamError, match=match):
                text_of(stream)
        finally:
            stream.close()


def chat_request() -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)


def text_of(events) -> str:
    return "".join(event.content for event in events)


CASES = [
    pytest.param(True, "", "chunked", id="tls-chunked"),
    pytest.param(True, "gzip", "chunked", id="tls-gzip-chunked"),
    pytest.param(False, "gzip", "chunked", id="tcp-gzip-chunked"),
    pytest.param(False, "", "length", id="tcp-content-length"),
    pytest.param(True, "", "close", id="tls-close-delimited"),
]


@pytest.mark.parametrize("tls, coding, framing", CASES)
def test_a_request_thread_reads_the_stream_whole(certificate, tls, coding, framing):
    with StreamServer(certificate if tls else None, coding, framing) as server:
        adapter = adapter_for(server, certificate)
        stream = adapter.open_stream(chat_request(), "m")
        try:
            assert stream.relayable
            assert text_of(stream) == "".join(PIECES)
        finally:
            stream.close()


@pytest.mark.parametrize("tls, coding, framing", CASES)
def test_the_relay_reads_the_stream_whole(certificate, tls, coding, framing):
    """The first event on this thread, the rest on the relay's, as under gunicorn."""
    relay = Relay().start(name="test-relay")
    client_here, client_there = socket.socketpair()
    ended = threading.Event()
    with StreamServer(certificate if tls else None, coding, framing) as server:
        adapter = adapter_for(server, certificate)
        stream = adapter.open_stream(chat_request(), "m")

        def body():
            try:
                for event in stream:
                    yield event.content.encode()
            except UpstreamError as e:
                yield f"<error: {e.message}>".encode()
            finally:
                stream.close()

        relay.add(client_here, body(), False, lambda whole: ended.set())
        client_there.settimeout(WAIT)
        received = b""
        while not ended.is_set() or len(received) < len("".join(PIECES)):
            piece = client_there.recv(1 << 20)
            if not piece:
                break
            received += piece
            if b"<error" in received or received.endswith(b" there"):
                break
    assert ended.wait(WAIT)
    client_here.close()
    client_there.close()
    assert received.decode() == "".join(PIECES)


def test_a_body_in_another_coding_is_read_by_urllib3_and_not_relayed(certificate):
    class Brotli(StreamServer):
        def _send(self, sock, lines):
            body = b"".join(lines)  # sent as is, but labelled br: chatd passes it on raw
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                b"Content-Encoding: br\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )

    with Brotli() as server:
        adapter = adapter_for(server, certificate)
        stream = adapter.open_stream(chat_request(), "m")
        try:
            assert not stream.relayable
        finally:
            stream.close()


def test_a_stream_cut_mid_chunk_is_an_upstream_error(certificate):
    class Cut(StreamServer):
        def _send(self, sock, lines):
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n400\r\nhalf"
                % (len(lines[0]), lines[0])
            )

    assert_stream_fails(Cut(), certificate, "broke off")


@pytest.mark.parametrize(
    "tls, coding, framing",
    [
        pytest.param(True, "", "chunked", id="tls-chunked"),
        pytest.param(False, "gzip", "chunked", id="tcp-gzip-chunked"),
        pytest.param(False, "", "length", id="tcp-content-length"),
    ],
)
def test_a_stream_read_to_its_end_gives_its_connection_back(certificate, tls, coding, framing):
    with StreamServer(certificate if tls else None, coding, framing, keep_alive=True) as server:
        adapter = adapter_for(server, certificate)
        for _ in range(3):
            stream = adapter.open_stream(chat_request(), "m")
            try:
                assert text_of(stream) == "".join(PIECES)
            finally:
                stream.close()
        assert server.connections == 1


def test_a_stream_relayed_to_its_end_gives_its_connection_back(certificate):
    """As under gunicorn: the first event on this thread, the rest on the relay's
    (a non-blocking socket), then the connection back to the pool, usable."""
    relay = Relay().start(name="test-relay")
    with StreamServer(certificate, keep_alive=True) as server:
        adapter = adapter_for(server, certificate)
        for _ in range(3):
            stream = adapter.open_stream(chat_request(), "m")
            client_here, client_there = socket.socketpair()
            ended = threading.Event()

            def body(stream=stream):
                try:
                    for event in stream:
                        yield event.content.encode()
                finally:
                    stream.close()

            relay.add(client_here, body(), False, lambda whole, ended=ended: ended.set())
            client_there.settimeout(WAIT)
            received = b""
            while not received.endswith(b" there"):
                piece = client_there.recv(1 << 20)
                assert piece
                received += piece
            assert ended.wait(WAIT)
            client_here.close()
            client_there.close()
            assert received.decode() == "".join(PIECES)
        assert server.connections == 1


def test_a_body_that_ends_later_than_its_stream_is_not_waited_for(certificate):
    """The format's end is in; the body's end comes 1 s later: the stream ends
    now, and its connection is closed rather than waited on for reuse."""
    with StreamServer(None, keep_alive=True, end_delay=1.0) as server:
        adapter = adapter_for(server, certificate)
        for _ in range(2):
            started = time.monotonic()
            stream = adapter.open_stream(chat_request(), "m")
            try:
                assert text_of(stream) == "".join(PIECES)
            finally:
                stream.close()
            assert time.monotonic() - started < 0.9
        assert server.connections == 2


def test_broken_chunk_framing_mid_stream_ends_the_stream_with_an_upstream_error(certificate):
    class Broken(StreamServer):
        def _send(self, sock, lines):
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(lines[0]), lines[0])
            )
            time.sleep(0.3)  # the stream has begun: the first event is out
            sock.sendall(b"+5\r\nhello\r\n")
            time.sleep(0.5)

    assert_stream_fails(Broken(), certificate, "broken stream: a chunk size is not a hex")


def test_a_gzip_bomb_stream_is_cut_at_max_response_bytes(certificate):
    """1 MiB is the test adapter's max_response_bytes; 64 MiB of zeros gzip to
    about 64 KiB. The reader stops inflating one byte past the limit."""

    class Bomb(StreamServer):
        def _send(self, sock, lines):
            bomb = gzip.compress(lines[0] + b"\0" * (64 << 20))
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(bomb), bomb)
            )

    with Bomb() as server:
        adapter = adapter_for(server, certificate)
        # Whatever of it arrived with the first event, the error is the same.
        with pytest.raises(UpstreamError, match="longer than max_response_bytes"):
            stream = adapter.open_stream(chat_request(), "m")
            try:
                text_of(stream)
            finally:
                stream.close()


def test_gzip_server_sanity():
    # The test's own gzip framing decodes with the standard library.
    pack = zlib.compressobj(wbits=31)
    data = pack.compress(b"abc") + pack.flush(zlib.Z_SYNC_FLUSH) + pack.flush()
    assert gzip.decompress(data) == b"abc"


# -- whole answers: the kernel read timeout of a pooled connection ----------------


@pytest.fixture
def sets(monkeypatch) -> list[float]:
    """Each SO_RCVTIMEO the adapters set during the test, in seconds."""
    from chatd.adapters import base

    seen = []
    real = base._set_recv_timeout
    monkeypatch.setattr(base, "_set_recv_timeout", lambda sock, s: (seen.append(s), real(sock, s)))
    return seen


def whole_request() -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])


def test_a_pooled_connection_keeps_its_read_timeout_from_call_to_call(sets):
    """SO_RCVTIMEO is set once, by the first call; the next calls on the same
    connection need the same within RECV_TIMEOUT_SLACK and set nothing."""
    with FakeOllama() as fake:
        adapter = make_wire_adapter(OllamaChatAdapter, "ollama", fake.url)
        for _ in range(3):
            assert adapter.reply(whole_request(), "m").content == "hello"
        assert fake.connections == 1
    assert len(sets) == 1 and 4.5 < sets[0] <= 5.0  # the adapter's timeout_secs, 5 s


def test_an_answer_dripping_on_a_connection_a_stream_gave_back_still_times_out():
    """A stream read to its end returns its connection with no read timeout; the
    next whole call on it sets one again and is cut at its deadline."""
    from chatd.resilience import Deadline

    class StreamThenDrip(StreamServer):
        answered = 0

        def _send(self, sock, lines):
            self.answered += 1
            if self.answered == 1:
                return super()._send(sock, lines)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            for _ in range(20):  # a byte every 0.3 s, for 6 s at most
                if self.stopping.wait(0.3):
                    return
                sock.sendall(b" ")

    with StreamThenDrip(None, keep_alive=True) as server:
        adapter = make_wire_adapter(OllamaChatAdapter, "ollama", server.url)
        stream = adapter.open_stream(chat_request(), "m")
        try:
            assert text_of(stream) == "".join(PIECES)
        finally:
            stream.close()
        started = time.monotonic()
        deadline = Deadline.after(started, "timeout_secs", 1.0)
        with pytest.raises(UpstreamError, match="timeout_secs"):
            adapter.reply(whole_request(), "m", deadline)
        took = time.monotonic() - started
        assert server.connections == 1  # the drip came on the stream's connection
    assert 0.9 <= took < 3.0


def test_a_connection_back_in_the_pool_has_its_read_timeout_left_alone(sets):
    """urllib3 gives the connection back in the read that takes the body's last
    bytes: the loop's next turn must not set SO_RCVTIMEO on what is now another
    call's socket (here the body comes 0.15 s after the head, so the deadline
    moved past RECV_TIMEOUT_SLACK meanwhile)."""

    class LateBody(StreamServer):
        def _send(self, sock, lines):
            body = json.dumps(FakeOllama().chat_answer({"model": "m"})).encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            time.sleep(0.15)
            sock.sendall(body)

    with LateBody(None, keep_alive=True) as server:
        adapter = make_wire_adapter(OllamaChatAdapter, "ollama", server.url)
        for _ in range(2):
            assert adapter.reply(whole_request(), "m").content == "hello"
        assert server.connections == 1
    assert len(sets) == 1


def test_a_call_whose_deadline_is_not_the_last_ones_sets_the_read_timeout_again(sets):
    """The kept SO_RCVTIMEO is reused only within RECV_TIMEOUT_SLACK: a call on the
    same connection with a shorter deadline sets its own."""
    from chatd.resilience import Deadline

    with FakeOllama() as fake:
        adapter = make_wire_adapter(OllamaChatAdapter, "ollama", fake.url)
        assert adapter.reply(whole_request(), "m").content == "hello"  # timeout_secs: 5 s
        short = Deadline.after(time.monotonic(), "timeout_secs", 1.0)
        assert adapter.reply(whole_request(), "m", short).content == "hello"
        assert fake.connections == 1
    assert len(sets) == 2 and 4.5 < sets[0] <= 5.0 and 0.5 < sets[1] <= 1.0
