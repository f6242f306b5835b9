"""chatd.adapters.base ~~~ What every wire format shares: sending, timing, errors.

:meth:`ChatAdapter._send` and the readers below are the one boundary where
``requests`` and urllib3 exceptions become chatd's own (:mod:`chatd.errors`);
nothing above an adapter sees a transport exception. Subclasses say how their
format's request bodies look and how its answers and stream events read into
the neutral :class:`~chatd.neutral.Reply` and :class:`~chatd.neutral.Event`;
what a client is answered in is a dialect's job (:mod:`chatd.dialects`).
"""

from __future__ import annotations

import http.client
import itertools
import re
import socket
import ssl
import struct
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import requests
import urllib3

from chatd import admission, codec, relay
from chatd.adapters.framing import BadEvent, StreamCut
from chatd.adapters.httpbody import BadBody, BodyDecoder
from chatd.errors import (
    BadRequest,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    redact,
    trim,
)
from chatd.neutral import ChatRequest, Event, Reply
from chatd.resilience import PROVIDER, Deadline, Policy
from chatd.sessions import head_deadline

# Error bodies are read no further than this: only the first KiB is passed on.
MAX_ERROR_BODY = 64 * 1024
READ_SIZE = 64 * 1024
# A model list (GET /models, /api/tags) is read no further than this.
MAX_LIST_BYTES = 8 * 1024 * 1024
# Upstream statuses a retry cannot fix: the key, the model or the request is wrong.
NOT_RETRYABLE = frozenset({400, 401, 402, 403, 404, 413, 422})
# A 429 that says a usage quota is spent, not a passing rate limit (Ollama Cloud,
# Zen, Kimi word it this way); retrying soon only burns the client's budget.
QUOTA_TEXT = re.compile(r"usage limit|quota|insufficient|exceeded your", re.IGNORECASE)
DONT_RETRY = {"x-should-retry": "false"}
# Upstream statuses that say "try again soon" (with 429, unless a quota is spent).
# 529 is Anthropic's overloaded_error: a 503 by another number.
RETRYABLE = frozenset({502, 503, 504, 529})
# How far a read's kernel timeout may drift from the deadline before it is set again.
RECV_TIMEOUT_SLACK = 0.05
_TIMEVAL = struct.Struct("@ll")
# SO_RCVTIMEO as chatd last set it on each upstream socket, in seconds: a pooled
# connection keeps it from one call to the next, so most calls set it not at all.
_recv_timeouts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def retry_after_secs(value: str | None) -> float | None:
    """Parse a Retry-After: seconds, or an HTTP date (RFC 9110, 10.2.3); None if neither."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT; obsolete forms may say -0000
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_text(body) -> str | None:
    """Return the message in a decoded upstream error envelope, or None if it has none.

    One rule covers Ollama ``{"error": "..."}``, OpenAI/Kimi/OpenRouter
    ``{"error": {"message": ...}}`` and Zen ``{"type": "error", "error": {...}}``.
    """
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return trim(redact(error))
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return trim(redact(error["message"]))
    return None


def upstream_message(raw: bytes) -> str:
    """Return the human message in an upstream error body; anything else as trimmed text.

    Keys are redacted before anything is cut, so no part of one survives.
    """
    text = raw.decode("utf-8", "replace")
    try:
        return error_text(codec.loads(text)) or trim(redact(text))
    except ValueError:
        return trim(redact(text))


def copy_fields(request: ChatRequest, names: dict[str, str], into: dict) -> None:
    """Copy each field of ``request`` that is set into ``into``, under its wire name."""
    for field, name in names.items():
        value = getattr(request, field)
        if value is not None:
            into[name] = value


# What a surprise in an upstream's JSON raises while it is read.
SHAPE_ERRORS = (KeyError, IndexError, TypeError, AttributeError, ValueError)


def _text(value) -> bool:
    return isinstance(value, str)


def _maybe_text(value) -> bool:
    return value is None or isinstance(value, str)


def checked_event(event: Event) -> Event:
    """Return ``event`` if its fields have the neutral types; TypeError if not.

    A reader passes on what the upstream sent (a finish reason, a tool-call
    index); an upstream that sent a list there must not reach a dialect.
    """
    if not (_text(event.content) and _text(event.thinking) and _maybe_text(event.finish_reason)):
        raise TypeError("event fields")
    for call in event.tool_calls or ():
        if type(call.index) is not int or not _text(call.arguments):
            raise TypeError("tool call piece")
        if not (_maybe_text(call.id) and _maybe_text(call.name)):
            raise TypeError("tool call piece")
    return event


def checked_reply(reply: Reply) -> Reply:
    """Return ``reply`` if its fields have the neutral types; TypeError if not."""
    if not (_text(reply.content) and _text(reply.thinking) and _maybe_text(reply.finish_reason)):
        raise TypeError("reply fields")
    for call in reply.tool_calls:
        if not (_text(call.id) and _text(call.name) and _text(call.arguments)):
            raise TypeError("tool call")
    return reply


def count(value) -> int:
    """A token count from an upstream: a non-negative int, or 0 for anything else
    (absent, null, a string, a negative number: none of them may reach a metric)."""
    return value if type(value) is int and value >= 0 else 0


def _socket_of(response: requests.Response):
    """Return the socket under ``response`` so its timeout can follow our deadline."""
    connection = getattr(response.raw, "_connection", None)
    return getattr(connection, "sock", None)


def _set_recv_timeout(sock, seconds: float) -> None:
    """The kernel's own timeout on each recv (SO_RCVTIMEO; 0 = none)."""
    if _recv_timeouts.get(sock) == seconds:
        return  # set already (a stream's reader clears it, then _let_go would again)
    whole = int(seconds)
    micros = int((seconds - whole) * 1e6) if seconds else 0
    if seconds and not (whole or micros):
        micros = 1
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(whole, micros))
    _recv_timeouts[sock] = seconds


def _let_go(response: requests.Response) -> None:
    """Done with a stream's answer: its connection back to the pool when its body
    was read to the end and nothing came after it, else closed.

    A stream's format often ends (``[DONE]``, ``"done": true``) a moment before
    its HTTP body does: what has arrived of the rest is read without waiting.
    Reusing the connection saves the next stream a connect, and a TLS handshake.
    """
    decoder, sock = getattr(response, "chatd_body", (None, None))
    try:
        if decoder is None or getattr(response.raw._fp, "will_close", True):
            return
        if not decoder.done:
            sock.setblocking(False)
            try:
                decoder.feed(sock.recv(READ_SIZE))
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
        if not decoder.done or decoder.extra:
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        sock.settimeout(None)
        _set_recv_timeout(sock, 0)
        response.chatd_released = True  # its reader must not touch the socket again
        response.raw._fp.close()  # http.client's answer is read: the connection is free
        response.raw.release_conn()
    except (OSError, ValueError, BadBody):
        pass  # closed below
    finally:
        response.close()


def _follow_deadline(sock, now: float, until: float) -> float:
    """SO_RCVTIMEO set to what is left until ``until`` when it drifted from it by more
    than RECV_TIMEOUT_SLACK (or none is set); return the timeout now applied."""
    applied = _recv_timeouts.get(sock)
    if not applied or abs(now + applied - until) > RECV_TIMEOUT_SLACK:
        applied = until - now
        _set_recv_timeout(sock, applied)
    return applied


def _clear_recv_timeout(sock) -> None:
    """No timeout left behind: the connection may go back to the pool."""
    try:
        _set_recv_timeout(sock, 0)
    except OSError:
        pass


class UpstreamStream:
    """An open upstream stream, read as neutral events; its first event already read.

    Iterate it once; :meth:`close` hangs up on the upstream at once (a client
    that went away must not keep a model generating for nobody).
    """

    def __init__(self, response: requests.Response, events: Iterator[Event]):
        self._response = response
        self._events = events
        #: Read straight from its socket (httpbody), so the relay may carry it on.
        self.relayable = getattr(response, "chatd_own_reads", False)
        self._on_close: list[Callable[[], None]] = []
        self._closed = False

    def __iter__(self) -> Iterator[Event]:
        return self._events

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the stream closes (a slot it holds, say)."""
        self._on_close.append(callback)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._response.close()
        finally:
            for callback in self._on_close:
                callback()


class ChatAdapter:
    """One wire format, spoken to one provider over its own pooled session."""

    wire = ""
    chat_path = ""
    models_path = ""
    #: Headers the format needs on every call (Anthropic's version header, say).
    extra_headers: dict[str, str] = {}
    #: Body fields this format fills from the request itself (the prompt, the
    #: model, chatd's own settings): a request's ``options`` may not set them.
    owned_fields: frozenset[str] = frozenset(
        {"model", "messages", "stream", "tools", "tool_choice"}
    )
    #: Dialects whose leftover ``options`` were written for this format: a /chat
    #: caller's ("chatd") chose them for its provider; a /v1 client's ("openai")
    #: are OpenAI fields, which only OpenAI-style formats take.
    options_from: frozenset[str] = frozenset({"chatd"})
    #: Splits the upstream's stream lines into events (SSE or NDJSON).
    iter_events: Callable[[Iterable[bytes]], Iterator[dict]]

    def __init__(
        self,
        provider: str,
        base_url: str,
        session: requests.Session,
        *,
        policy: Policy,
        max_response_bytes: int,
        probe_path: str | None = None,
        probe_timeout: float = 1.0,
    ):
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.chat_url = self.base_url + self.chat_path
        # host[:port], named when it cannot be reached (never the path: it may hold a key).
        self.host = urlsplit(self.base_url).netloc.rpartition("@")[2]
        self.models_url = self.base_url + self.models_path
        self.probe_url = self.base_url + probe_path if probe_path else None
        self.session = session
        # The chat call is prepared once (URL, headers) and sent through the
        # session's own HTTPAdapter: Session.request would merge settings,
        # cookies and hooks again on every call, about 180 µs of CPU that
        # chatd never needs (measured in issue 4; see README "Performance").
        self._chat_headers = dict(
            session.prepare_request(
                requests.Request("POST", self.chat_url, headers=self.extra_headers)
            ).headers
        )
        self._transport = session.get_adapter(self.chat_url)
        self.policy = policy
        self.max_response_bytes = max_response_bytes
        self.probe_timeout = probe_timeout

    def __repr__(self) -> str:
        # Never the session: its headers hold the key.
        return f"<{type(self).__name__} {self.provider} {self.chat_url}>"

    # -- what a wire format defines ------------------------------------------

    def build_body(self, request: ChatRequest, upstream_model: str) -> dict:
        raise NotImplementedError

    def call_headers(self, request: ChatRequest) -> dict | None:
        """Headers for this one call beyond the session's (none by default)."""
        return None

    def options_for(self, request: ChatRequest) -> dict:
        """The request's ``options`` if they were written for this format, else none."""
        return request.options if request.dialect in self.options_from else {}

    def merge_options(self, body: dict, options: dict) -> dict:
        """Put the request's provider-native ``options`` last into ``body``.

        :raises BadRequest: an option would replace a field this format fills
            (the translated prompt, ``store``, ...) behind chatd's back.
        """
        clash = self.owned_fields.intersection(options)
        if clash:
            raise BadRequest(
                f"options.{min(clash)} may not be set: chatd fills it for "
                f"{self.wire}-format providers"
            )
        body.update(options)
        return body

    def parse_reply(self, data: dict) -> Reply:
        """Return a whole answer as a neutral Reply."""
        raise NotImplementedError

    def stream_reader(self) -> Callable[[dict], Event | None]:
        """Return a translator of one stream's events into neutral Events (None
        for an event that adds nothing); a new one per stream, as some formats
        must remember things between events."""
        raise NotImplementedError

    def parse_models(self, data: dict) -> list[str]:
        """Return the model ids in the upstream's model list."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------

    def complete(
        self, request: ChatRequest, upstream_model: str, deadline: Deadline | None = None
    ) -> dict:
        """Send one non-streaming call within ``deadline`` (default: timeout_secs from now);
        return the upstream's answer, checked."""
        data = self._post(
            self.build_body(request, upstream_model),
            request.request_id,
            deadline,
            self.call_headers(request),
        )
        message = error_text(data)
        if message is not None:
            # Some upstreams report failure inside a 200 (Ollama, OpenRouter).
            raise UpstreamError(
                f"{self.provider} answered with an error: {message}", provider=self.provider
            )
        return data

    def reply(
        self, request: ChatRequest, upstream_model: str, deadline: Deadline | None = None
    ) -> Reply:
        """Send one non-streaming call within ``deadline``; return its answer as a neutral Reply."""
        data = self.complete(request, upstream_model, deadline)
        reply = self.translate(lambda: checked_reply(self.parse_reply(data)))
        reply.raw = data
        return reply

    def translate(self, function, *args):
        """Apply a format translation, turning a surprise in the upstream's JSON into a 502."""
        try:
            return function(*args)
        except SHAPE_ERRORS:
            raise self._unexpected_shape() from None

    def _unexpected_shape(self) -> UpstreamError:
        return UpstreamError(
            f"{self.provider} answered with JSON of an unexpected shape", provider=self.provider
        )

    def open_stream(
        self, request: ChatRequest, upstream_model: str, deadline: Deadline | None = None
    ) -> UpstreamStream:
        """Start a streaming call and read its first event, all within ``deadline``
        (default: first_token_timeout_secs from now).

        Everything that can fail before the first event (connect, status, an
        error as the first event) raises here, so it still gets its own status code.
        """
        if deadline is None:
            deadline = self._deadline(stream=True)
        body = self.build_body(request, upstream_model)
        response = self._send(
            body,
            deadline,
            stream=True,
            request_id=request.request_id,
            headers=self.call_headers(request),
        )
        events = self._events(response, deadline)
        try:
            first = next(events)
        except StopIteration:
            response.close()
            raise UpstreamError(
                f"{self.provider} ended its stream before any event", provider=self.provider
            ) from None
        except BaseException:
            response.close()
            raise
        return UpstreamStream(response, self._neutral(first, events))

    def _neutral(self, first: dict, rest: Iterator[dict]) -> Iterator[Event]:
        """The stream's events read into neutral ones, those that add nothing left out.

        A surprise in an event's JSON (a missing key, a list where a string
        belongs) is a 502, never a crash in a dialect after the 200 is out.
        """
        read = self.stream_reader()
        try:
            for raw in itertools.chain((first,), rest):
                event = read(raw)
                if event is not None:
                    yield checked_event(event)
        except SHAPE_ERRORS:
            raise self._unexpected_shape() from None

    def list_models(self, timeout: float) -> list[str]:
        """Return the upstream's model ids; raises UpstreamError on any failure."""
        return self.translate(self.parse_models, self.get_json(self.models_url, timeout))

    def get_json(self, url: str, timeout: float, limit: int = MAX_LIST_BYTES):
        """GET ``url`` on this provider's session; return the decoded JSON.

        Read no further than ``limit`` bytes: a broken upstream's endless list
        must not fill the worker's memory.

        :raises UpstreamError: on any failure, the cause named by its type only.
        """
        try:
            with self.session.get(url, timeout=timeout, stream=True) as response:
                response.raise_for_status()
                raw = response.raw.read(limit + 1, decode_content=True)
            if len(raw) > limit:
                raise ValueError(f"more than {limit} bytes")
            return codec.loads(raw)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise UpstreamError(
                f"{self.provider} did not list its models ({type(e).__name__})",
                provider=self.provider,
            ) from None

    def probe(self) -> bool:
        """Return whether the provider's probe URL answers 2xx within the probe timeout."""
        if self.probe_url is None:
            return True
        try:
            response = self.session.get(self.probe_url, timeout=self.probe_timeout)
            response.close()
        except requests.RequestException:
            return False
        return response.ok

    # -- transport -------------------------------------------------------------

    def _deadline(self, stream: bool) -> Deadline:
        """A call's deadline from now, for callers that did not bring one."""
        if stream:
            return Deadline.after(
                time.monotonic(), "first_token_timeout_secs", self.policy.first_token_timeout
            )
        return Deadline.after(time.monotonic(), "timeout_secs", self.policy.timeout)

    def _send(
        self,
        body: dict,
        deadline: Deadline,
        stream: bool = False,
        request_id: str = "",
        headers: dict | None = None,
    ) -> requests.Response:
        """POST ``body`` as JSON; return the open response once its status is 2xx.

        The connect gets connect_timeout_secs, and the answer's head must be in
        within first_token_timeout_secs (or timeout_secs when smaller, for a whole
        answer), each cut short by the call's ``deadline``, which no phase passes.
        """
        policy = self.policy
        first_byte, first_byte_name = policy.first_token_timeout, "first_token_timeout_secs"
        if not stream and policy.timeout < first_byte:
            first_byte, first_byte_name = policy.timeout, "timeout_secs"
        first_byte, first_byte_name = deadline.limit(first_byte, first_byte_name)
        connect, connect_name = deadline.limit(policy.connect_timeout, "connect_timeout_secs")
        if first_byte <= 0:
            # The call's budget went on earlier attempts: nothing to say about this provider.
            raise self._timeout_error(deadline.name, deadline.seconds, scope=None)
        payload = codec.dumps(body)
        prepared = requests.PreparedRequest()
        prepared.method = "POST"
        prepared.url = self.chat_url
        prepared.headers = {**self._chat_headers, "Content-Length": str(len(payload))}
        if request_id:
            prepared.headers["X-Request-ID"] = request_id
        if headers:
            prepared.headers.update(headers)
        prepared.body = payload
        # From here the call waits on the upstream: the next one may start its set-up.
        admission.set_up_done(stream)
        # Connect and head (status line and headers) together in first_byte, not
        # just each read of it.
        head_deadline.at = time.monotonic() + first_byte
        try:
            response = self._transport.send(
                prepared, stream=True, timeout=(min(connect, first_byte), first_byte)
            )
        except requests.ConnectTimeout:
            # Nothing reached the upstream: as safe to retry as a refusal.
            if connect >= first_byte:
                connect, connect_name = first_byte, first_byte_name
            raise self._timeout_error(
                connect_name, self._setting(connect_name, deadline), retryable=True, scope=PROVIDER
            ) from None
        except requests.Timeout:
            raise self._timeout_error(
                first_byte_name, self._setting(first_byte_name, deadline), scope=PROVIDER
            ) from None
        except requests.RequestException as e:
            raise UpstreamError(
                f"{self.provider} is unreachable ({type(e).__name__}) at {self.host}",
                retryable=True,
                provider=self.provider,
                scope=PROVIDER,
            ) from None
        finally:
            head_deadline.at = None
        if response.status_code >= 400:
            with response:
                raw = self._read_body(response, deadline, MAX_ERROR_BODY, truncate=True)
            raise self._status_error(response.status_code, raw, response.headers)
        return response

    def _post(
        self,
        body: dict,
        request_id: str = "",
        deadline: Deadline | None = None,
        headers: dict | None = None,
    ) -> dict:
        """POST ``body`` within the call's deadline; return the decoded answer."""
        if deadline is None:
            deadline = self._deadline(stream=False)
        response = self._send(body, deadline, request_id=request_id, headers=headers)
        with response:
            raw = self._read_body(response, deadline, self.max_response_bytes, truncate=False)
        try:
            data = codec.loads(raw)
        except codec.DecodeError:
            text = trim(redact(raw[:4096].decode("utf-8", "replace")), 200)
            raise UpstreamError(
                f"{self.provider} answered {response.status_code} with invalid JSON: {text}",
                provider=self.provider,
                upstream_status=response.status_code,
            ) from None
        if not isinstance(data, dict):
            raise UpstreamError(
                f"{self.provider} answered with JSON that is not an object",
                provider=self.provider,
                upstream_status=response.status_code,
            )
        return data

    def _read_body(
        self, response: requests.Response, deadline: Deadline, limit: int, truncate: bool
    ) -> bytes:
        """Read the whole body, but never past ``deadline`` nor past ``limit`` bytes.

        requests' read timeout applies to each read, so a server that drips a
        byte a second would never trip it; here every read waits at most for
        what is left of the total deadline, and ``read1`` returns whatever has
        arrived instead of waiting for a full buffer.
        """
        chunks = []
        size = 0
        total = (deadline.at, deadline.name, deadline.seconds)
        for chunk in self._reads(response, lambda: total):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                if truncate:
                    break
                raise UpstreamError(
                    f"{self.provider} answer is larger than max_response_bytes ({limit} bytes)",
                    provider=self.provider,
                )
        return b"".join(chunks)

    def _reads(self, response: requests.Response, deadline: Callable[[], tuple]):
        """Yield what each read returns, each read bounded by ``deadline()``.

        ``deadline()`` returns (monotonic deadline, setting name, its seconds),
        so a timeout names the setting that fired.

        The socket is read in blocking mode with the kernel's SO_RCVTIMEO
        rather than with Python's socket timeout: a timeout socket polls
        before every recv, two system calls and two hand-offs of the GIL per
        piece instead of one, and each settimeout is one more. SO_RCVTIMEO is
        set again only when the deadline moved by more than RECV_TIMEOUT_SLACK
        (an idle deadline moves with each event, so about once per stream),
        and it stays set when the call ends: the pooled connection's next call
        most often needs the same, and reads that do not block (urllib3's, with
        a timeout, of the next head) ignore it. When it fires, the read fails
        or comes back short: that, or any failure, at the deadline is the
        timeout.
        """
        sock = _socket_of(response)
        applied = None  # SO_RCVTIMEO as now set, in seconds
        until, name, seconds = deadline()
        try:
            if sock is not None:
                sock.settimeout(None)
            while True:
                until, name, seconds = deadline()
                now = time.monotonic()
                remaining = until - now
                if remaining <= 0:
                    raise self._timeout_error(name, seconds)
                # None once urllib3 gave the connection back to the pool, in the
                # read that took the body's last bytes: another call's now.
                sock = _socket_of(response)
                if sock is not None:
                    applied = _follow_deadline(sock, now, until)
                chunk = response.raw.read1(READ_SIZE, decode_content=True)
                if not chunk:
                    if applied is not None and time.monotonic() >= until - RECV_TIMEOUT_SLACK:
                        raise self._timeout_error(name, seconds)
                    return
                yield chunk
        except urllib3.exceptions.ReadTimeoutError:
            until, name, seconds = deadline()
            raise self._timeout_error(name, seconds) from None
        except (OSError, ValueError, http.client.HTTPException, urllib3.exceptions.HTTPError) as e:
            raise self._read_failed(e, response, until, name, seconds) from None

    def _stream_reads(self, response: requests.Response, deadline: Callable[[], tuple]):
        """Yield a stream's body as it comes, each read bounded by ``deadline()``.

        A plain or TLS socket with a body :mod:`~chatd.adapters.httpbody` can
        decode is read straight from the socket: blocking (with SO_RCVTIMEO, as
        in :meth:`_reads`) on a request thread, and through the stream's
        :meth:`relay.Relayed.recv` once the relay carries the stream on. Any
        other body goes through urllib3 (:meth:`_reads`) and is never relayed.
        """
        fp = getattr(getattr(response.raw, "_fp", None), "fp", None)
        # The socket under http.client's reader: the connection lets go of it
        # when the answer says it will close, the reader never does.
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
        decoder = None
        if fp is not None and type(sock) in (socket.socket, ssl.SSLSocket):
            decoder = BodyDecoder.for_headers(response.headers, self.max_response_bytes)
        if decoder is None:
            yield from self._reads(response, deadline)
            return
        response.chatd_own_reads = True
        response.chatd_body = (decoder, sock)
        # What http.client read past the head is in its buffer: take it without
        # blocking, then read the socket itself.
        sock.setblocking(False)
        try:
            leftover = fp.read1(READ_SIZE) or b""
        except (BlockingIOError, ssl.SSLWantReadError):
            leftover = b""
        except (OSError, ValueError):
            leftover = b""  # the recv below meets the same failure and names it
        sock.settimeout(None)
        applied = None  # SO_RCVTIMEO as last set, in seconds
        until, name, seconds = deadline()
        try:
            data = leftover
            while True:
                if data:
                    chunk = decoder.feed(data)
                    if chunk:
                        yield chunk
                if decoder.done:
                    return
                until, name, seconds = deadline()
                now = time.monotonic()
                remaining = until - now
                if remaining <= 0:
                    raise self._timeout_error(name, seconds)
                stream = relay.current()
                if stream is not None:
                    data = stream.recv(sock, READ_SIZE, until)
                    if data is None:
                        raise self._timeout_error(name, seconds)
                else:
                    applied = _follow_deadline(sock, now, until)
                    data = sock.recv(READ_SIZE)
                if not data:
                    if decoder.at_eof():
                        return
                    raise self._broke_off(response, "the connection closed")
        except BadBody as e:
            raise UpstreamError(
                f"{self.provider} sent a broken stream: {e}",
                provider=self.provider,
                upstream_status=response.status_code,
            ) from None
        except (OSError, ValueError) as e:
            raise self._read_failed(e, response, until, name, seconds) from None
        finally:
            if applied is not None and not getattr(response, "chatd_released", False):
                _clear_recv_timeout(sock)

    def _broke_off(self, response: requests.Response, why: str) -> UpstreamError:
        return UpstreamError(
            f"{self.provider} broke off its answer ({why})",
            retryable=True,
            provider=self.provider,
            upstream_status=response.status_code,
        )

    def _read_failed(self, error, response, until: float, name: str, seconds: float):
        """A read that failed: at its deadline the timeout, before it a broken answer."""
        if time.monotonic() >= until - RECV_TIMEOUT_SLACK:
            return self._timeout_error(name, seconds)
        return self._broke_off(response, type(error).__name__)

    def _lines(self, response: requests.Response, deadline: Deadline) -> Iterator[bytes]:
        """Yield the stream's lines; time out when no event line comes in time.

        The first event must come by the call's ``deadline`` (the same one the
        connect and the head had); after it, idle_timeout_secs from the last
        event: a long answer may stream for minutes, but every gap is bounded.
        Comment lines (keep-alives) do not count as events.
        """
        policy = self.policy
        first = (deadline.at, deadline.name, deadline.seconds)
        # A list, so the deadline read before each read sees the latest event.
        deadline = [first]
        size = 0
        # A bytearray grows in place: `bytes += chunk` copies the whole buffer
        # each time, quadratic on a stream that sends no newline.
        buffer = bytearray()
        for chunk in self._stream_reads(response, lambda: deadline[0]):
            size += len(chunk)
            if size > self.max_response_bytes:
                raise UpstreamError(
                    f"{self.provider} stream is longer than max_response_bytes "
                    f"({self.max_response_bytes} bytes)",
                    provider=self.provider,
                )
            if b"\n" not in chunk:
                buffer += chunk
                continue
            if buffer:
                buffer += chunk
                chunk = bytes(buffer)
            # Usually a whole event or few: split the read itself, not a copy.
            *lines, rest = chunk.split(b"\n")
            buffer = bytearray(rest)
            for line in lines:
                line = line.rstrip(b"\r")
                if line and not line.startswith(b":"):
                    deadline[0] = (
                        time.monotonic() + policy.idle_timeout,
                        "idle_timeout_secs",
                        policy.idle_timeout,
                    )
                yield line
        if buffer:
            yield bytes(buffer)

    def _events(self, response: requests.Response, deadline: Deadline) -> Iterator[dict]:
        """Yield the stream's events; an in-band error, a cut or garbage raises."""
        lines = self._lines(response, deadline)
        try:
            for event in self.iter_events(lines):
                message = error_text(event)
                if message is not None:
                    raise UpstreamError(
                        f"{self.provider} failed mid-stream: {message}", provider=self.provider
                    )
                yield event
        except StreamCut as e:
            raise UpstreamError(f"{self.provider} broke off: {e}", provider=self.provider) from None
        except BadEvent as e:
            raise UpstreamError(
                f"{self.provider} sent a stream event that is not JSON: {redact(str(e))}",
                provider=self.provider,
            ) from None
        finally:
            lines.close()  # and with it the reads, before the connection goes
            _let_go(response)

    # -- errors ----------------------------------------------------------------

    def _setting(self, name: str, deadline: Deadline) -> float:
        """The configured seconds of setting ``name`` (for the message)."""
        if name == deadline.name:
            return deadline.seconds
        return {
            "connect_timeout_secs": self.policy.connect_timeout,
            "first_token_timeout_secs": self.policy.first_token_timeout,
            "timeout_secs": self.policy.timeout,
        }[name]

    def _timeout_error(
        self, name: str, seconds: float, retryable: bool = False, scope: str | None = "model"
    ):
        return UpstreamTimeout(
            f"{self.provider} did not answer within {name} ({seconds:g} s)",
            retryable=retryable,
            provider=self.provider,
            timeout=name,
            scope=scope,
        )

    def _status_error(self, status: int, raw: bytes, headers) -> UpstreamError:
        text = upstream_message(raw)
        message = f"{self.provider} answered {status}: {text}"
        if status == 429:
            retry_after = headers.get("Retry-After")
            out = {"Retry-After": retry_after} if retry_after else {}
            quota = bool(QUOTA_TEXT.search(text))
            if quota:
                out.update(DONT_RETRY)
                message += " (usage quota spent: retrying will not help)"
            return UpstreamRateLimited(
                message,
                retryable=not quota,
                retry_after=retry_after_secs(retry_after),
                headers=out,
                provider=self.provider,
                upstream_status=status,
                scope=None,  # honoured through Retry-After, never a cooldown
                **({"quota": True} if quota else {}),
            )
        return UpstreamError(
            message,
            retryable=status in RETRYABLE,
            retry_after=retry_after_secs(headers.get("Retry-After")),
            headers=DONT_RETRY if status in NOT_RETRYABLE else None,
            provider=self.provider,
            upstream_status=status,
            scope="model" if status >= 500 else None,
        )
