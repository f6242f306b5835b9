"""Loopback fake upstreams that speak Ollama's and OpenAI's wire formats.

Each binds 127.0.0.1:0 in a thread of its own, records every request it gets,
and can be told to misbehave (hang, drip, reset, answer an error or garbage),
so the live tests can show what chatd does with a bad upstream. Use as::

    with FakeOllama() as fake:
        fake.behave(mode="hang", delay=5)
        ... fake.url ... fake.requests[-1].json ...

Every wait inside a handler is bounded and ends when the fake stops.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WAIT_EVENT_TIMEOUT = 5


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # chatd hanging up on a hanging or dripping fake is the point of those tests.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so pooling is visible
    # Head and body are separate writes: with Nagle on, the body waits for the
    # client's delayed ACK, 40 ms on every call.
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        self.server.fake._connection_opened()

    def log_message(self, *args):  # quiet
        pass

    def _record(self) -> Recorded:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        recorded = Recorded(self.command, self.path, dict(self.headers.items()), body)
        self.server.fake.requests.append(recorded)
        return recorded

    def do_GET(self):
        self.server.fake.handle(self, self._record())

    def do_POST(self):
        self.server.fake.handle(self, self._record())

    def do_DELETE(self):  # Ollama's /api/delete, relayed by chatd's /api
        self.server.fake.handle(self, self._record())


class FakeUpstream:
    """Base of the fakes: the server, the recording and the misbehaviours."""

    chat_path = ""

    def __init__(self, reply: str = "hello"):
        self.reply = reply
        self.requests: list[Recorded] = []
        self.connections = 0
        # Streams whose reader hung up before the stream ended.
        self.hangups = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.behave()

    def behave(self, mode: str = "ok", **options) -> None:
        """Set how the next chat calls are answered.

        modes: ok, status (status, body, headers), echo_auth (status, json), hang
        (delay), drip (interval, size), drip_head (interval), reset, invalid_json,
        big (size), sequence (steps: one mode and its options per call); ``times=N``
        misbehaves N times, then answers normally; ``before=S`` waits S seconds first.
        Streaming calls in mode ok send ``pieces`` (a list of strings)
        ``interval`` seconds apart; ``cut_after``
        N pieces drops the connection, ``error_after`` N pieces sends an in-band
        error, ``stall_after`` N pieces goes quiet for ``stall`` seconds,
        ``first_delay`` waits that long between the head and the first piece.
        """
        self.mode = mode
        self.options = options

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self):
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.fake = self
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT_EVENT_TIMEOUT)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _connection_opened(self):
        with self._lock:
            self.connections += 1

    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith(self.chat_path)]

    # -- answering -------------------------------------------------------------

    def handle(self, handler: _Handler, recorded: Recorded) -> None:
        if recorded.method == "GET":
            return self.answer_get(handler, recorded)
        if not recorded.path.endswith(self.chat_path):
            return self.send(handler, 404, {"error": f"no route {recorded.path}"})
        mode, opt = self.mode, self.options
        if mode == "sequence":
            # One step per call ({"mode": ..., options}), then normal answers.
            with self._lock:
                steps = opt["steps"]
                step = dict(steps.pop(0)) if steps else {"mode": "ok"}
            mode, opt = step.pop("mode"), step
        if opt.get("before") and self._stopping.wait(opt["before"]):
            return
        if opt.get("times") is not None:
            # Misbehave this many more times, then answer normally again.
            with self._lock:
                opt["times"] -= 1
                if opt["times"] <= 0:
                    self.behave("ok")
        if mode == "ok" and recorded.json.get("stream"):
            return self._stream(handler, recorded.json, opt)
        if mode == "ok":
            return self.send(handler, 200, self.chat_answer(recorded.json))
        if mode == "status":
            return self.send(
                handler, opt["status"], opt.get("body", {}), headers=opt.get("headers")
            )
        if mode == "hang":
            self._stopping.wait(opt.get("delay", WAIT_EVENT_TIMEOUT))
            return self.send(handler, 200, self.chat_answer(recorded.json))
        if mode == "drip":
            return self._drip(handler, opt.get("interval", 0.2), opt.get("size", 200))
        if mode == "drip_head":
            return self._drip_head(handler, opt.get("interval", 0.2))
        if mode == "echo_auth":
            # A careless upstream: its error repeats the caller's credentials.
            auth = recorded.headers.get("Authorization", "")
            key = auth.partition(" ")[2]
            text = f"bad request; you sent Authorization: {auth} (key {key})"
            body = {"error": {"message": text}} if opt.get("json", True) else text.encode()
            return self.send(handler, opt.get("status", 400), body)
        if mode == "reset":
            return self._reset(handler)
        if mode == "invalid_json":
            return self.send_raw(handler, 200, b"<html>502 Bad Gateway</html>", "text/html")
        if mode == "big":
            return self.send_raw(handler, 200, b" " * opt["size"], "application/json")
        raise AssertionError(f"unknown mode {mode}")

    def answer_get(self, handler, recorded):
        self.send(handler, 404, {"error": "not found"})

    def chat_answer(self, body: dict) -> dict:
        raise NotImplementedError

    def send(self, handler, status: int, body, headers: dict | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_raw(handler, status, raw, "application/json", headers)

    def send_raw(self, handler, status, raw: bytes, content_type: str, headers=None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(raw)
        handler.wfile.flush()

    # -- streaming -------------------------------------------------------------

    content_type = ""

    def stream_events(self, body: dict, pieces: list[str]) -> list[bytes]:
        """Return the wire events for a whole stream, last one included."""
        raise NotImplementedError

    def error_event(self, message: str) -> bytes:
        raise NotImplementedError

    def _stream(self, handler, body: dict, opt: dict | None = None) -> None:
        opt = self.options if opt is None else opt
        pieces = opt.get("pieces", ["Hel", "lo", " there"])
        events = self.stream_events(body, pieces)
        handler.send_response(200)
        handler.send_header("Content-Type", self.content_type)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.close_connection = True
        cut, fail, stall = opt.get("cut_after"), opt.get("error_after"), opt.get("stall_after")
        try:
            for i, event in enumerate(events):
                if i == cut:
                    handler.wfile.flush()
                    handler.connection.shutdown(socket.SHUT_RDWR)
                    return
                if i == fail:
                    event = self.error_event("the model crashed")
                if i == stall and self._stopping.wait(opt.get("stall", WAIT_EVENT_TIMEOUT)):
                    return
                if i and opt.get("interval") and self._stopping.wait(opt["interval"]):
                    return
                if not i and opt.get("first_delay") and self._stopping.wait(opt["first_delay"]):
                    return
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                handler.wfile.flush()
                if i == fail:
                    break
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except OSError:
            with self._lock:
                self.hangups += 1

    def _drip(self, handler, interval: float, size: int) -> None:
        """Promise ``size`` bytes, then send one every ``interval`` seconds."""
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        handler.wfile.flush()
        deadline = time.monotonic() + WAIT_EVENT_TIMEOUT * 4
        for _ in range(size):
            if self._stopping.wait(interval) or time.monotonic() > deadline:
                break
            try:
                handler.wfile.write(b" ")
                handler.wfile.flush()
            except OSError:
                break
        handler.close_connection = True

    def _drip_head(self, handler, interval: float) -> None:
        """Send the status line, then a header one byte every ``interval`` seconds."""
        deadline = time.monotonic() + WAIT_EVENT_TIMEOUT * 4
        try:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            handler.wfile.flush()
            while not self._stopping.wait(interval) and time.monotonic() < deadline:
                handler.wfile.write(b"a")
                handler.wfile.flush()
        except OSError:
            pass
        handler.close_connection = True

    def _reset(self, handler) -> None:
        """Promise a body, send part of it, and drop the connection."""
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b'{"message": {"role": "assis')
        handler.wfile.flush()
        handler.connection.shutdown(socket.SHUT_RDWR)
        handler.close_connection = True


class FakeOllama(FakeUpstream):
    """Ollama's native API: POST /api/chat, GET /api/version and /api/tags."""

    chat_path = "/api/chat"
    content_type = "application/x-ndjson"

    def stream_events(self, body, pieces):
        line = {"model": body.get("model"), "created_at": "2026-01-01T00:00:00Z", "done": False}
        events = [
            json.dumps({**line, "message": {"role": "assistant", "content": p}}).encode() + b"\n"
            for p in pieces
        ]
        last = {
            **line,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 7,
            "eval_count": len(pieces),
        }
        return [*events, json.dumps(last).encode() + b"\n"]

    def error_event(self, message):
        return json.dumps({"error": message}).encode() + b"\n"

    def answer_get(self, handler, recorded):
        if recorded.path.endswith("/api/version"):
            return self.send(handler, 200, {"version": "0.0.0-fake"})
        if recorded.path.endswith("/api/tags"):
            return self.send(handler, 200, {"models": [{"name": "llama3.2:latest"}]})
        return super().answer_get(handler, recorded)

    def chat_answer(self, body: dict) -> dict:
        return {
            "model": body.get("model"),
            "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": self.reply},
            "done": True,
            "done_reason": "stop",
            "total_duration": 1000,
            "prompt_eval_count": 7,
            "eval_count": 3,
        }


class FakeOpenAI(FakeUpstream):
    """OpenAI chat completions: POST {base}/chat/completions, GET {base}/models."""

    chat_path = "/chat/completions"
    content_type = "text/event-stream"

    def stream_events(self, body, pieces):
        head = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": body.get("model"),
        }

        def event(choices, **extra):
            return b"data: " + json.dumps({**head, "choices": choices, **extra}).encode() + b"\n\n"

        def delta(d, finish=None):
            return [{"index": 0, "delta": d, "finish_reason": finish}]

        events = [b": OPENROUTER PROCESSING\n\n" + event(delta({"role": "assistant"}))]
        events += [event(delta({"content": p})) for p in pieces]
        events.append(event(delta({}, "stop")))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "prompt_tokens": 11,
                "completion_tokens": len(pieces),
                "total_tokens": 11 + len(pieces),
            }
            events.append(event([], usage=usage))
        events.append(b"data: [DONE]\n\n")
        return events

    def error_event(self, message):
        # OpenRouter's in-band error: a chunk with a top-level error.
        body = {
            "error": {"code": 502, "message": message},
            "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def answer_get(self, handler, recorded):
        if recorded.path.endswith("/models"):
            return self.send(handler, 200, {"object": "list", "data": [{"id": "fake-model"}]})
        return super().answer_get(handler, recorded)

    def chat_answer(self, body: dict) -> dict:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
        }
