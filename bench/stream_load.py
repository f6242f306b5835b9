"""Many streams at once: N streamed calls opened together, each timed piece by piece.

stream_client.py times calls one after another; this opens N at once, as a
pipeline or an office of agents does, and notes for each stream its status,
when each content piece arrived and whether it ended with its end marker.
One asyncio loop with a bare Protocol per connection (no StreamReader, no
HTTP library), so the client itself holds 4,000 streams on a shared core.
Stdlib only; loopback only; every stream bounded by a deadline.

:func:`summarize` is the arithmetic of the report, tested on its own
(tests/test_bench.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

# Far above a benchmark's N: a typo must not open a million sockets.
MAX_STREAMS = 10_000


@dataclass
class StreamResult:
    """One stream as the client saw it; times in seconds after the connect began."""

    status: int = 0
    retry_after: bool = False
    arrivals: list[float] = field(default_factory=list)
    finished: bool = False  # its end marker arrived
    cut: bool = False  # an in-band error event arrived
    error: str = ""  # the connection failed, or the deadline passed


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(rank) - 1]


def summarize(results: list[StreamResult], pieces: int) -> dict:
    """Counts and percentiles over one cell's streams.

    completed: status 200, every one of ``pieces`` pieces and the end marker;
    shed: a 503 with Retry-After; failed: anything else. First piece and
    largest gap (per stream, then the percentile over streams) count
    completed streams only, in milliseconds.
    """
    completed = [r for r in results if r.status == 200 and r.finished and len(r.arrivals) == pieces]
    shed = [r for r in results if r.status == 503 and r.retry_after]
    firsts = [r.arrivals[0] * 1000 for r in completed]
    gaps = [
        max(b - a for a, b in zip(r.arrivals, r.arrivals[1:], strict=False)) * 1000
        for r in completed
        if len(r.arrivals) > 1
    ]
    errors: dict[str, int] = {}
    for r in results:
        if r not in completed and r not in shed:
            kind = r.error or (f"HTTP {r.status}" if r.status != 200 else "incomplete stream")
            errors[kind] = errors.get(kind, 0) + 1
    return {
        "streams": len(results),
        "completed": len(completed),
        "shed": len(shed),
        "failed": len(results) - len(completed) - len(shed),
        "errors": errors,
        "pieces": sum(len(r.arrivals) for r in results),
        "first_piece_ms_p50": percentile(firsts, 50),
        "first_piece_ms_p99": percentile(firsts, 99),
        "gap_ms_p50": percentile(gaps, 50),
        "gap_ms_p99": percentile(gaps, 99),
    }


def costs(cell: dict, cpu_s: float, peak_rss_mib: float, idle_rss_mib: float, admitted: int):
    """CPU per streamed piece (µs; each call's set-up included, as it is in the
    CPU) and memory per admitted stream (KiB, over the server's idle RSS)."""
    return {
        "cpu_us_per_piece": cpu_s * 1e6 / max(cell["pieces"], 1),
        "rss_kib_per_stream": (peak_rss_mib - idle_rss_mib) * 1024 / max(admitted, 1),
    }


class StreamProtocol(asyncio.Protocol):
    """Reads one HTTP/1.1 streamed answer (chunked, SSE or NDJSON) and notes its pieces.

    Chunk-size lines are skipped as lines that are neither a piece nor a marker:
    a piece is a line holding ``piece``, the end a line holding ``end``.
    """

    def __init__(self, result: StreamResult, started: float, piece: bytes, end: bytes, done):
        self.result = result
        self.started = started
        self.piece = piece
        self.end = end
        self.done = done
        self.buffer = b""
        self.head = True

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter() - self.started
        buffer = self.buffer + data
        result = self.result
        if self.head:
            if b"\r\n\r\n" not in buffer:
                self.buffer = buffer
                return
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            self.head = False
            try:
                result.status = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                result.error = "bad status line"
            result.retry_after = b"\r\nretry-after:" in head.lower()
        *lines, self.buffer = buffer.split(b"\n")
        for line in lines:
            if self.piece in line:
                result.arrivals.append(now)
            elif self.end in line:
                result.finished = True
            elif line.startswith(b"event: error"):
                result.cut = True

    def connection_lost(self, exc) -> None:
        if exc is not None and not self.result.error:
            self.result.error = type(exc).__name__
        if not self.done.done():
            self.done.set_result(None)


def request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def one_stream(host, port, payload, piece, end, timeout) -> StreamResult:
    loop = asyncio.get_running_loop()
    result = StreamResult()
    started = time.perf_counter()
    done = loop.create_future()
    transport = None
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(
                lambda: StreamProtocol(result, started, piece, end, done), host, port
            )
            transport.write(payload)
            await done
    except TimeoutError:
        result.error = "client deadline"
    except OSError as e:
        result.error = type(e).__name__
    finally:
        if transport is not None:
            transport.close()
    return result


async def health_probe(host: str, port: int, stop: asyncio.Event, every: float) -> list[float]:
    """GET /health every ``every`` s until ``stop``; each answer's time in ms (or the
    deadline's, 5 s, for one that did not answer)."""
    times = []
    while not stop.is_set() and len(times) < 10_000:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                await reader.read()
                writer.close()
        except (TimeoutError, OSError):
            pass
        times.append((time.perf_counter() - started) * 1000)
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass
    return times


async def open_streams(
    host: str,
    port: int,
    path: str,
    body: bytes,
    n: int,
    *,
    sse: bool,
    timeout: float,
    health: bool = False,
) -> tuple[list[StreamResult], list[float]]:
    """Open ``n`` streams at once; return each one's result, and /health times if asked."""
    if not 1 <= n <= MAX_STREAMS:
        raise ValueError(f"streams must be 1 to {MAX_STREAMS}")
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError("the benchmark only loads loopback")
    payload = request_bytes(host, port, path, body)
    # chatd: SSE deltas and [DONE]; the upstream: Ollama NDJSON lines.
    piece, end = (b'"content":"', b"data: [DONE]") if sse else (b'"done":false', b'"done":true')
    stop = asyncio.Event()
    probe = asyncio.create_task(health_probe(host, port, stop, 0.25)) if health else None
    results = await asyncio.gather(
        *(one_stream(host, port, payload, piece, end, timeout) for _ in range(n))
    )
    stop.set()
    return list(results), (await probe if probe else [])
