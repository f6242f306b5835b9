"""chatd.observability ~~~ One record per request, finished once: a log line and metrics.

A :class:`CallRecord` is made with each request (its id, client, start time),
filled in as the request is served (provider, model, upstream time, retries,
fallbacks, tokens) and finished once: when the response is sent, or, for a
stream, when the stream ends, so its line carries the stream's tokens and
length. Every log line of the request carries its id, and nothing a client or
an upstream sent is logged but these fields: never a header, a body or a key.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatd import codec

if TYPE_CHECKING:
    # Not at run time: gunicorn.conf.py imports chatd.config (and so this module)
    # in the master, and prometheus_client must not be imported there before
    # PROMETHEUS_MULTIPROC_DIR is set, or every worker keeps its metrics to itself.
    from chatd.metrics import Metrics

access_log = logging.getLogger("chatd.access")

# X-Request-ID values we take from a client (or nginx); anything else is replaced.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_current = threading.local()
# New ids: 16 random hex digits per process, then a counter (32 in all), unique
# across workers and restarts without a uuid4 (2 us) per request.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count()
# Log lines waiting for stderr, at most this many characters (~4 MiB); past
# that they are dropped and counted.
MAX_WAITING_CHARS = 4 * 1024 * 1024
# Lines written to stderr in one write, at most.
WRITE_BATCH = 256
# At exit, how long the lines still waiting may take to be written.
FLUSH_WAIT_SECS = 2.0


def request_id_from(header: str | None) -> str:
    """Return the client's request id if it is safe to log and echo, else a new one."""
    if header and REQUEST_ID.fullmatch(header):
        return header
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def current_request_id() -> str:
    return getattr(_current, "request_id", "-")


@dataclass(slots=True)
class CallRecord:
    """What one request did, for its log line and its metrics."""

    request_id: str
    method: str
    path: str
    client: str
    started: float = field(default_factory=time.monotonic)
    route: str = "-"
    provider: str = "-"
    model: str = "-"
    status: int = 0
    upstream_secs: float = 0.0
    first_token_secs: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    tried: list[str] = field(default_factory=list)
    stream: bool = False
    #: How a stream ended: "done" ([DONE] sent), "error:<type>" (cut with an
    #: error event) or "client_gone" (the client left first). The status is 200
    #: once a stream has begun, so this is what tells a cut stream in the log.
    stream_end: str = "-"
    finished: bool = False

    def begin(self) -> None:
        """Make this the current request of this thread (for every log line's id)."""
        _current.request_id = self.request_id

    def count_tokens(self, usage: dict | None) -> None:
        if usage:
            # Counters only go up: whatever an upstream said, never below 0.
            self.prompt_tokens = max(0, usage.get("prompt_tokens") or 0)
            self.completion_tokens = max(0, usage.get("completion_tokens") or 0)

    def server_timing(self) -> str:
        """The Server-Timing header: where the time went, as far as known now."""
        total = (time.monotonic() - self.started) * 1000
        upstream = self.upstream_secs * 1000
        if self.stream:
            return (
                f'upstream;dur={upstream:.1f};desc="first event", chatd;dur={total - upstream:.1f}'
            )
        return f"upstream;dur={upstream:.1f}, chatd;dur={total - upstream:.1f}"


def finish(record: CallRecord, metrics: Metrics) -> None:
    """Write the request's one access line and count it, once."""
    if record.finished:
        return
    record.finished = True
    total = time.monotonic() - record.started
    if record.stream and record.stream_end == "-":
        record.stream_end = "client_gone"
    provider = record.provider
    child = metrics.child
    child(metrics.requests, record.route, provider, str(record.status)).inc()
    if provider != "-":
        child(metrics.upstream_latency, provider).observe(record.upstream_secs)
        if record.first_token_secs is not None:
            child(metrics.first_token, provider).observe(record.first_token_secs)
        if not record.stream and record.upstream_secs:
            metrics.overhead.observe(max(0.0, total - record.upstream_secs))
        if record.prompt_tokens or record.completion_tokens:
            # The model that served the call: after a fallback, that one.
            served = record.tried[-1] if record.tried else record.model
            model = metrics.model_label(provider, served)
            child(metrics.tokens, provider, model, "in").inc(record.prompt_tokens)
            child(metrics.tokens, provider, model, "out").inc(record.completion_tokens)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "%s %s %s provider=%s model=%s latency_ms=%d upstream_ms=%d tokens=%d/%d "
            "retries=%d fallbacks=%s stream=%s client=%s",
            record.method,
            record.path,
            record.status,
            provider,
            record.model,
            total * 1000,
            record.upstream_secs * 1000,
            record.prompt_tokens,
            record.completion_tokens,
            record.retries,
            ",".join(record.tried) if len(record.tried) > 1 else "-",
            record.stream_end,
            record.client,
            extra={"access": record, "latency_ms": round(total * 1000, 1)},
        )
    _current.request_id = "-"


class RequestIdFilter(logging.Filter):
    """Give every log record the id of the request its thread is serving."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; access lines carry the request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
        }
        access = getattr(record, "access", None)
        if access is not None:
            line.update(
                client=access.client,
                method=access.method,
                path=access.path,
                route=access.route,
                provider=access.provider,
                model=access.model,
                status=access.status,
                latency_ms=record.latency_ms,
                upstream_ms=round(access.upstream_secs * 1000, 1),
                first_token_ms=None
                if access.first_token_secs is None
                else round(access.first_token_secs * 1000, 1),
                prompt_tokens=access.prompt_tokens,
                completion_tokens=access.completion_tokens,
                retries=access.retries,
                fallbacks=access.tried if len(access.tried) > 1 else [],
                stream=access.stream,
                stream_end=access.stream_end if access.stream else None,
            )
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return codec.dumps(line).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def escape_controls(text: str) -> str:
    """Return ``text`` with every control or line-breaking character as a visible escape."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
        for c in text
    )


class TextFormatter(logging.Formatter):
    """One line per record, whatever a client or an upstream put in its fields.

    A newline in a model name, a ``%0a`` in a path or an upstream's error text
    would otherwise start a second, forged line; the traceback of an error,
    which chatd itself writes, keeps its lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def set_up_logging(level: str, log_format: str) -> None:
    """Log chatd's lines to stderr (gunicorn's error log), each with its request id."""
    logger = logging.getLogger("chatd")
    logger.setLevel(level.upper())
    handler = next((h for h in logger.handlers if isinstance(h, _ChatdHandler)), None)
    if handler is None:
        handler = _ChatdHandler()
        handler.addFilter(RequestIdFilter())
        logger.addHandler(handler)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))


class _ChatdHandler(logging.Handler):
    """chatd's own handler (so setting up twice adds one): lines to stderr, written
    by a thread of its own.

    A thread that logs never waits on stderr. A full pipe or a paused terminal
    would otherwise stall every request thread that logs, and a worker's stream
    relay, the one thread that carries all its open streams. A line is
    formatted where it is logged and queued; past MAX_WAITING_CHARS waiting,
    lines are dropped, and the writer says how many as soon as it can write again.
    """

    def __init__(self, stream=None):
        super().__init__()
        self.stream = sys.stderr if stream is None else stream
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting_chars = 0
        self._dropped = 0
        self._count_lock = threading.Lock()  # the two counts above
        self._writer_pid: int | None = None  # the process whose writer thread runs
        self._writer: threading.Thread | None = None
        self._closed = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        if self._writer_pid != os.getpid() and not self._start_writer():
            # No writer (closed, or no thread to be had): as a plain handler would.
            self._write_now(line)
            return
        with self._count_lock:
            if self._waiting_chars + len(line) > MAX_WAITING_CHARS:
                self._dropped += 1
                return
            self._waiting_chars += len(line)
        self._waiting.put(line)

    def _start_writer(self) -> bool:
        """Start this process's writer (a thread does not survive a fork); say if it runs."""
        with self._count_lock:
            if self._closed:
                return False
            if self._writer_pid == os.getpid():
                return True
            writer = threading.Thread(target=self._write, name="chatd-log", daemon=True)
            try:
                writer.start()
            except RuntimeError:
                return False  # out of threads, or the interpreter is exiting
            self._writer, self._writer_pid = writer, os.getpid()
            return True

    def _write_now(self, text: str) -> bool:
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:
            # stderr closed, gone or refusing (OSError, ValueError), or any
            # other surprise: the writer must outlive it, the lines are counted.
            return False
        return True

    def _write(self) -> None:
        while True:
            batch = [self._waiting.get()]
            while len(batch) < WRITE_BATCH:
                try:
                    batch.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            lines = [line for line in batch if isinstance(line, str)]
            text = "".join(lines)
            with self._count_lock:
                self._waiting_chars -= len(text)
                dropped, self._dropped = self._dropped, 0
            if dropped:
                text += self._dropped_line(dropped)
            if not self._write_now(text):
                with self._count_lock:
                    # Said when stderr takes lines again, with those dropped before.
                    self._dropped += len(lines) + dropped
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            if None in batch:
                return

    def _dropped_line(self, dropped: int) -> str:
        """The line that says ``dropped`` lines were lost, in the log's format."""
        record = logging.makeLogRecord(
            {
                "name": "chatd.log",
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": f"chatd: {dropped} log lines dropped: stderr did not keep up",
                "request_id": "-",
            }
        )
        try:
            return self.format(record) + "\n"
        except Exception:
            return record.msg + "\n"

    def flush(self) -> None:
        """Wait, FLUSH_WAIT_SECS at most, for the lines logged so far to be written
        (logging calls this at exit)."""
        if self._writer_pid != os.getpid():
            return
        written = threading.Event()
        self._waiting.put(written)
        written.wait(FLUSH_WAIT_SECS)

    def close(self) -> None:
        """The writer ends once what was logged before is written; later lines
        are written as they come."""
        with self._count_lock:
            self._closed = True
            running = self._writer_pid == os.getpid()
            self._writer_pid = None
        if running:
            self._waiting.put(None)
        super().close()
