"""Time a streamed answer piece by piece: time to first piece, gaps between pieces.

wrk sees a stream only as one long response; a person sees the pieces. This
client sends calls one after another and notes when each piece with content
arrives, from chatd (SSE ``data:`` events, ending ``data: [DONE]``) or straight
from the upstream (Ollama NDJSON lines, ending ``"done": true``).
"""

from __future__ import annotations

import json
import statistics
import time

import requests

JSON_HEADERS = {"Content-Type": "application/json"}
READ_TIMEOUT = 10


def piece_of(event: bytes, sse: bool) -> tuple[str, bool]:
    """(content, whether it is the end marker) of one SSE event or NDJSON line."""
    if sse:
        if event.startswith(b"event: error"):
            raise RuntimeError(f"chatd cut the stream: {event[:300]!r}")
        payload = event.removeprefix(b"data: ").strip()
        if payload == b"[DONE]":
            return "", True
        return json.loads(payload).get("delta", {}).get("content", ""), False
    line = json.loads(event)
    return line["message"]["content"], bool(line.get("done"))


def stream_once(session: requests.Session, url: str, body: bytes, sse: bool) -> list[float]:
    """Send one streaming call; return when each content piece arrived (s after sending)."""
    separator = b"\n\n" if sse else b"\n"
    arrivals, buffer, finished = [], b"", False
    started = time.perf_counter()
    with session.post(
        url, data=body, headers=JSON_HEADERS, stream=True, timeout=READ_TIMEOUT
    ) as response:
        response.raise_for_status()
        # chunk_size=None: each chunk as it arrives, not once a buffer is full.
        for chunk in response.iter_content(chunk_size=None):
            now = time.perf_counter() - started
            *events, buffer = (buffer + chunk).split(separator)
            for event in events:
                content, end = piece_of(event, sse)
                if content:
                    arrivals.append(now)
                finished = finished or end
    if not finished or not arrivals:
        raise RuntimeError(f"the stream from {url} ended without its end marker")
    return arrivals


def stream_timings(url: str, body: bytes, sse: bool, calls: int) -> dict:
    """Time to first piece and the gaps between pieces, over ``calls`` sequential calls."""
    firsts, gaps, pieces = [], [], []
    with requests.Session() as session:
        for _ in range(calls):
            arrivals = stream_once(session, url, body, sse)
            firsts.append(arrivals[0] * 1000)
            gaps.extend((b - a) * 1000 for a, b in zip(arrivals, arrivals[1:], strict=False))
            pieces.append(len(arrivals))
    return {
        "calls": calls,
        "first_piece_ms_median": statistics.median(firsts),
        "first_piece_ms_max": max(firsts),
        "gap_ms_mean": statistics.fmean(gaps),
        "gap_ms_max": max(gaps),
        "pieces_per_call": sorted(set(pieces)),
    }
