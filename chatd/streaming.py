"""chatd.streaming ~~~ Answering with server-sent events, on /chat and on /v1.

Each piece is written the moment the upstream sends it: the generators below
yield one event per upstream event and gunicorn writes each at once.
``X-Accel-Buffering: no`` keeps nginx in front from buffering either. Once the
200 is out, a failure can only be told in-band: an ``event: error`` and no
``[DONE]``, so a client can tell a cut stream from a finished one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from flask import Response

from chatd import codec
from chatd.adapters.base import ChatAdapter, ChunkContext, UpstreamStream, usage
from chatd.errors import ChatdError
from chatd.observability import CallRecord
from chatd.routing import Route

log = logging.getLogger("chatd.streaming")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"
DELTA_KEYS = ("content", "thinking", "tool_calls")


def sse(data: dict) -> bytes:
    return b"data: " + codec.dumps(data) + b"\n\n"


def stream_response(events: Iterator[bytes], upstream: UpstreamStream) -> Response:
    """Answer with ``events``; hang up on ``upstream`` when the client's response closes."""
    response = Response(events, mimetype="text/event-stream", headers=SSE_HEADERS)
    # Runs when gunicorn closes the response, also if the client left before
    # the generator ever ran, so no upstream connection outlives its client.
    response.call_on_close(upstream.close)
    return response


def chat_events(
    upstream: UpstreamStream, adapter: ChatAdapter, route: Route, record: CallRecord
) -> Iterator[bytes]:
    """/chat's stream: a ``delta`` per piece, a last event with done_reason and usage, [DONE]."""

    def events() -> Iterator[bytes]:
        head = {"model": route.upstream_model, "provider": route.provider}
        done_reason = None
        counts = None
        for event in upstream:
            parts = adapter.translate(adapter.parse_event, event)
            delta = {key: parts[key] for key in DELTA_KEYS if key in parts}
            if delta:
                yield sse({**head, "delta": delta})
            done_reason = parts.get("done_reason", done_reason)
            counts = parts.get("usage", counts)
        record.count_tokens(counts)
        yield sse({**head, "delta": {}, "done_reason": done_reason, "usage": counts or usage(0, 0)})

    return finished_or_cut(events(), upstream, record)


def openai_events(
    upstream: UpstreamStream, adapter: ChatAdapter, context: ChunkContext, record: CallRecord
) -> Iterator[bytes]:
    """/v1's stream: ``chat.completion.chunk`` events, then [DONE]."""

    def events() -> Iterator[bytes]:
        for event in upstream:
            counts = adapter.translate(adapter.parse_event, event).get("usage")
            if counts:
                record.count_tokens(counts)
            for chunk in adapter.translate(adapter.openai_chunks, event, context):
                yield sse(chunk)

    return finished_or_cut(events(), upstream, record)


def finished_or_cut(
    events: Iterator[bytes], upstream: UpstreamStream, record: CallRecord
) -> Iterator[bytes]:
    """``events``, then [DONE]; or, once the upstream fails, an error event and no [DONE].
    The upstream is closed however it ends, the client leaving included."""
    try:
        yield from events
        record.stream_end = "done"
        yield DONE
    except ChatdError as e:
        yield cut(e, record)
    finally:
        upstream.close()


def cut(error: ChatdError, record: CallRecord) -> bytes:
    """Log a stream cut short, and return the error event that tells the client."""
    record.begin()  # the generator may run after the view returned
    record.stream_end = f"error:{error.error_type}"
    log.warning("stream from %s cut: %s", record.provider, error.message)
    body = error.to_dict()
    body["error"]["request_id"] = record.request_id
    return b"event: error\ndata: " + codec.dumps(body) + b"\n\n"
