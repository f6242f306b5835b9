"""chatd.streaming ~~~ Answering with a stream, whatever the dialect.

Each piece is written the moment the upstream sends it: a dialect's renderer
yields bytes per neutral event and gunicorn writes each at once.
``X-Accel-Buffering: no`` keeps nginx in front from buffering either. Once the
200 is out, a failure can only be told in-band, in the dialect's own way (an
``event: error`` and no ``[DONE]`` for SSE dialects), so a client can tell a
cut stream from a finished one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from flask import Response, request

from chatd.adapters.base import UpstreamStream
from chatd.errors import ChatdError
from chatd.neutral import Event
from chatd.observability import CallRecord
from chatd.relay import CAN_RELAY, RELAYED

log = logging.getLogger("chatd.streaming")


SSE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def counted(upstream: UpstreamStream, record: CallRecord) -> Iterator[Event]:
    """The upstream's events, their token counts noted in ``record`` as they pass."""
    for event in upstream:
        if event.usage is not None:
            record.count_tokens(event.usage.as_dict())
        yield event


def stream_response(
    rendered: Iterator[bytes],
    upstream: UpstreamStream,
    record: CallRecord,
    error_event: Callable[[dict], bytes],
    mimetype: str = SSE,
) -> Response:
    """Answer with ``rendered``; hang up on ``upstream`` when the client's response closes.

    ``error_event`` renders a ChatdError's body as the dialect's in-band error.
    """
    body = finished_or_cut(rendered, upstream, record, error_event)
    response = Response(body, mimetype=mimetype, headers=SSE_HEADERS)
    # Runs when gunicorn closes the response, also if the client left before
    # the generator ever ran, so no upstream connection outlives its client.
    response.call_on_close(upstream.close)
    environ = request.environ
    if upstream.relayable and environ.get(CAN_RELAY):
        environ[RELAYED] = record.begin
    return response


def finished_or_cut(
    rendered: Iterator[bytes],
    upstream: UpstreamStream,
    record: CallRecord,
    error_event: Callable[[dict], bytes],
) -> Iterator[bytes]:
    """``rendered`` to its end; or, once the upstream fails, the dialect's error event.
    The upstream is closed however it ends, the client leaving included."""
    try:
        yield from rendered
        record.stream_end = "done"
    except ChatdError as e:
        yield error_event(cut(e, record))
    except Exception:
        # A bug, not the upstream: still end the stream the way a client can tell.
        log.exception("stream from %s failed", record.provider)
        yield error_event(cut(ChatdError("internal error"), record))
    finally:
        upstream.close()


def cut(error: ChatdError, record: CallRecord) -> dict:
    """Log a stream cut short; return the error's body for the dialect to render."""
    record.begin()  # the generator may run after the view returned
    record.stream_end = f"error:{error.error_type}"
    log.warning("stream from %s cut: %s", record.provider, error.message)
    body = error.to_dict()
    body["error"]["request_id"] = record.request_id
    return body
