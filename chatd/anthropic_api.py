"""chatd.anthropic_api ~~~ Anthropic's Messages API on chatd's port.

``POST /v1/messages`` takes Anthropic's request and answers in Anthropic's
shape, streamed or whole, from whichever provider the model name routes to;
``POST /v1/messages/count_tokens`` gives an estimate; ``HEAD /`` and ``GET /``
answer 200, the warm-up Claude Code sends before its first turn. So the
``anthropic`` SDKs and Claude Code work with ``ANTHROPIC_BASE_URL`` pointed at
chatd. Errors under ``/v1/messages`` come in Anthropic's envelope
(:mod:`chatd.errors` picks it by the path). Reading and rendering live in
:mod:`chatd.dialects.anthropic`; the views only wire them to the dispatcher.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from flask import Blueprint, current_app, request

from chatd import chat
from chatd.adapters.base import UpstreamStream
from chatd.dialects import anthropic, presplit
from chatd.errors import ChatdError
from chatd.neutral import Event
from chatd.observability import CallRecord
from chatd.streaming import stream_response
from chatd.validation import parse_json

log = logging.getLogger("chatd.anthropic_api")

bp = Blueprint("anthropic", __name__)

#: Where Anthropic's error envelope is used (registered in chatd.app).
PREFIX = "/v1/messages"


@bp.post(PREFIX)
def create_message():
    """Answer an Anthropic Messages request, streamed or whole."""
    dispatcher = current_app.extensions["chatd"].dispatcher
    record = request.record
    chat_request = anthropic.parse_request(parse_json(chat.read_body()))
    if chat_request.stream:
        outcome = dispatcher.run(chat_request, chat.open_stream(chat_request), record)
        upstream = outcome.result
        neutral = presplit.events(upstream, outcome.adapter, outcome.route.upstream_model)
        events = message_events(upstream, neutral, chat_request.model, record)
        response = stream_response(events, upstream)
        response.headers.update(chat.fallback_headers(outcome))
        return response
    outcome = dispatcher.run(
        chat_request,
        lambda adapter, route: presplit.reply(adapter, chat_request, route.upstream_model),
        record,
    )
    reply = outcome.result
    record.count_tokens(reply.usage.as_dict())
    return anthropic.render_reply(reply, chat_request.model), 200, chat.fallback_headers(outcome)


def message_events(
    upstream: UpstreamStream, neutral: Iterator[Event], model: str, record: CallRecord
) -> Iterator[bytes]:
    """Anthropic's stream for ``upstream``; once it fails, an ``error`` event and no
    message_stop. The upstream is closed however it ends, the client leaving included."""

    def counted() -> Iterator[Event]:
        for event in neutral:
            if event.usage is not None:
                record.count_tokens(event.usage.as_dict())
            yield event

    try:
        yield from anthropic.render_stream(counted(), model)
        record.stream_end = "done"
    except ChatdError as e:
        record.begin()  # the generator may run after the view returned
        record.stream_end = f"error:{e.error_type}"
        log.warning("stream from %s cut: %s", record.provider, e.message)
        yield anthropic.error_event(e, record.request_id)
    finally:
        upstream.close()


@bp.post(PREFIX + "/count_tokens")
def count_tokens():
    """Estimate the input tokens of a Messages request (see the README: not a tokenizer)."""
    return {"input_tokens": anthropic.count_tokens(parse_json(chat.read_body()))}


@bp.route("/", methods=["GET", "HEAD"])
def root():
    """Answer Claude Code's warm-up request (``HEAD /``) and say what this is."""
    return {"service": "chatd", "apis": ["/chat", "/v1", PREFIX]}
