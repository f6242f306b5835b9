"""Benchmark upstream for what stock nginx cannot do: answer late, and stream.

    python bench/upstream.py --port PORT [--delay-ms 50] [--pieces 20] [--gap-ms 10]

``POST /api/chat`` answers as Ollama does. With ``"stream": false`` it sends
one canned JSON answer after --delay-ms (a model that takes its time); with
``"stream": true`` (Ollama's default) it sends --pieces NDJSON lines --gap-ms
apart, chunked, then the ``"done": true`` line. Anything else is a 404.

HTTP/1.1 with keep-alive; request bodies must carry Content-Length (chatd's
and wrk's do). Stdlib only, one asyncio loop, 127.0.0.1 only. It stops on
SIGTERM, or by itself after --max-seconds, so it never outlives a benchmark long.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass

from canned import OLLAMA_ANSWER, compact, ollama_stream

MAX_HEAD = 64 * 1024
MAX_BODY = 4 * 1024 * 1024
# Bounds the per-connection loop; far above what one benchmark sends on a connection.
MAX_REQUESTS_PER_CONNECTION = 100_000_000


class BadRequest(Exception):
    """The request cannot be served; the connection is answered 400 and closed."""


@dataclass
class Request:
    method: str
    path: str
    keep_alive: bool
    body: bytes


@dataclass(frozen=True)
class Behaviour:
    delay: float
    gap: float
    answer: bytes
    pieces: list[bytes]


def response_head(status: str, content_type: str, length: int | None, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}"]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def whole(status: str, body: bytes, keep_alive: bool = True) -> bytes:
    content_type = "application/json; charset=utf-8"
    return response_head(status, content_type, len(body), keep_alive) + body


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request; None when the client closed the connection between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise BadRequest("connection closed mid-head") from None
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too large") from None
    request_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    try:
        method, path, version = request_line.split(" ")
    except ValueError:
        raise BadRequest(f"bad request line {request_line!r}") from None
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise BadRequest("only Content-Length request bodies are supported")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest("bad Content-Length") from None
    if not 0 <= length <= MAX_BODY:
        raise BadRequest("bad Content-Length")
    body = await reader.readexactly(length) if length else b""
    keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return Request(method, path, keep_alive, body)


def wants_stream(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        raise BadRequest("body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("body is not a JSON object")
    return data.get("stream", True) is not False  # Ollama streams unless told not to


async def send_stream(writer: asyncio.StreamWriter, behaviour: Behaviour, keep_alive: bool):
    """The NDJSON pieces, one chunk each, on a fixed schedule (no drift from slow writes)."""
    loop = asyncio.get_running_loop()
    writer.write(response_head("200 OK", "application/x-ndjson", None, keep_alive))
    start = loop.time()
    last = len(behaviour.pieces) - 1
    for i, piece in enumerate(behaviour.pieces):
        # The "done" line follows the last piece at once, as Ollama's does.
        delay = start + min(i, last - 1) * behaviour.gap - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
    writer.write(b"0\r\n\r\n")


async def respond(writer: asyncio.StreamWriter, request: Request, behaviour: Behaviour):
    if request.method != "POST" or request.path != "/api/chat":
        writer.write(whole("404 Not Found", b'{"error":"not found"}', request.keep_alive))
    elif wants_stream(request.body):
        await send_stream(writer, behaviour, request.keep_alive)
    else:
        await asyncio.sleep(behaviour.delay)
        writer.write(whole("200 OK", behaviour.answer, request.keep_alive))
    await writer.drain()


async def handle(behaviour: Behaviour, reader: asyncio.StreamReader, writer):
    try:
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            request = await read_request(reader)
            if request is None:
                break
            await respond(writer, request, behaviour)
            if not request.keep_alive:
                break
    except BadRequest as e:
        body = compact({"error": str(e)})
        writer.write(whole("400 Bad Request", body, keep_alive=False))
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the client went away; nothing to answer
    finally:
        writer.close()


async def serve(port: int, behaviour: Behaviour, max_seconds: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(behaviour, r, w), "127.0.0.1", port, limit=MAX_HEAD, backlog=4096
    )
    print(f"upstream.py listening on 127.0.0.1:{port}", flush=True)
    async with server:
        try:
            await asyncio.wait_for(server.serve_forever(), max_seconds)
        except TimeoutError:
            print(f"upstream.py: stopping after --max-seconds {max_seconds:g}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--pieces", type=int, default=20)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--max-seconds", type=float, default=3 * 3600)
    args = parser.parse_args()
    behaviour = Behaviour(
        delay=args.delay_ms / 1000,
        gap=args.gap_ms / 1000,
        answer=compact(OLLAMA_ANSWER),
        pieces=ollama_stream(args.pieces),
    )
    try:
        asyncio.run(serve(args.port, behaviour, args.max_seconds))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
