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

from flask import Blueprint, request

from chatd.answer import Rendering, answer, read_body
from chatd.dialects import anthropic
from chatd.validation import parse_json

bp = Blueprint("anthropic", __name__)

#: Where Anthropic's error envelope is used (registered in chatd.app).
PREFIX = "/v1/messages"


@bp.post(PREFIX)
def create_message():
    """Answer an Anthropic Messages request, streamed or whole."""
    chat_request = anthropic.parse_request(parse_json(read_body()))
    beta = request.headers.get("anthropic-beta")
    if beta:
        # Passed on only to a provider that speaks Anthropic itself, with the body it goes with.
        chat_request.native_headers = {"anthropic-beta": beta}
    # An Anthropic upstream's own answer and events go through as they came.
    rendering = Rendering(
        reply=lambda reply, outcome: anthropic.render_reply(
            reply, chat_request.model, outcome.adapter.wire == "anthropic"
        ),
        stream=lambda events, outcome: anthropic.render_stream(
            events, chat_request.model, outcome.adapter.wire == "anthropic"
        ),
        stream_error=anthropic.render_stream_error,
    )
    return answer(chat_request, rendering)


@bp.post(PREFIX + "/count_tokens")
def count_tokens():
    """Estimate the input tokens of a Messages request (see the README: not a tokenizer)."""
    return {"input_tokens": anthropic.count_tokens(parse_json(read_body()))}


@bp.route("/", methods=["GET", "HEAD"])
def root():
    """Answer Claude Code's warm-up request (``HEAD /``) and say what this is."""
    return {"service": "chatd", "apis": ["/chat", "/v1", PREFIX]}
