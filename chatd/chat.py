"""chatd.chat ~~~ The dispatch routes: ``POST /chat`` and ``GET /chat/providers``.

``GET /providers`` answers like ``/chat/providers``: the seed's Go service named it so.

Views stay thin: validate, resolve, look up, call, answer. They hold no
``try``: the error table in :mod:`chatd.errors` maps every failure.
"""

from __future__ import annotations

from flask import Blueprint, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from chatd.dialects import chat as dialect
from chatd.dispatch import Outcome
from chatd.neutral import ChatRequest
from chatd.streaming import counted, stream_response
from chatd.validation import build_chat_request, parse_json

bp = Blueprint("chat", __name__)


def read_body() -> bytes:
    """Return the request body; 413 once it passes max_request_bytes, chunked or not.

    A declared length is checked before anything is read. A chunked body
    werkzeug reads only up to the limit, stopping without saying whether more
    was coming: one more byte from the server's stream tells.
    """
    current = request._get_current_object()
    limit = current.max_content_length
    length = current.content_length
    if length is not None:
        if length > limit:
            raise RequestEntityTooLarge()
        return current.environ["wsgi.input"].read(length)
    data = current.get_data(cache=False)
    if len(data) >= limit and current.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return data


def fallback_headers(outcome: Outcome) -> dict:
    """Say what was tried when more than one model name was (an alias or fallbacks)."""
    if len(outcome.tried) > 1:
        return {"X-Chatd-Fallbacks": ", ".join(outcome.tried)}
    return {}


def open_stream(chat_request: ChatRequest):
    """An attempt that opens the stream (its first event read, so failures still retry)."""
    return lambda adapter, route, deadline: adapter.open_stream(
        chat_request, route.upstream_model, deadline
    )


def get_reply(chat_request: ChatRequest):
    """An attempt that makes one whole call and reads it into a neutral Reply."""
    return lambda adapter, route, deadline: adapter.reply(
        chat_request, route.upstream_model, deadline
    )


@bp.post("/chat")
def dispatch():
    """Route one chat request to its provider and answer in chatd's shape."""
    dispatcher = current_app.extensions["chatd"].dispatcher
    record = request.record
    chat_request = build_chat_request(parse_json(read_body()))
    if chat_request.stream:
        outcome = dispatcher.run(chat_request, open_stream(chat_request), record)
        upstream = outcome.result
        rendered = dialect.render_stream(counted(upstream, record), outcome.route)
        response = stream_response(rendered, upstream, record, dialect.render_stream_error)
        response.headers.update(fallback_headers(outcome))
        return response
    outcome = dispatcher.run(chat_request, get_reply(chat_request), record)
    reply = outcome.result
    record.count_tokens(reply.usage.as_dict())
    body = dialect.render_reply(reply, outcome.route)
    # The upstream time of the attempt that served: no queueing, no retry sleeps.
    body["latency_ms"] = int(outcome.upstream_secs * 1000)
    return body, 200, fallback_headers(outcome)


@bp.get("/chat/providers")
@bp.get("/providers")
def list_providers():
    """List the registered providers and whether each can take calls now."""
    chatd = current_app.extensions["chatd"]
    registry, dispatcher = chatd.registry, chatd.dispatcher
    status = {}
    for name in registry.names():
        state = dispatcher.status(name)
        if name in registry.disabled:
            state["reason"] = "disabled"
        elif "reason" not in state and not registry.available(name):
            state["reason"] = "unreachable"
        state["available"] = "reason" not in state
        status[name] = state
    return {
        "providers": {name: state["available"] for name, state in status.items()},
        # Why a provider is unavailable (disabled, cooldown, unreachable), and its load.
        "status": status,
        "disabled": sorted(registry.disabled),
        # What to set to register the others; names of env vars and files, never values.
        "unregistered": {name: u.hint() for name, u in registry.unregistered.items()},
    }
