"""chatd.chat ~~~ The dispatch routes: ``POST /chat`` and ``GET /chat/providers``.

Views stay thin: validate, resolve, look up, call, answer. They hold no
``try``: the error table in :mod:`chatd.errors` maps every failure.
"""

from __future__ import annotations

import time

from flask import Blueprint, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from chatd.routing import resolve_model
from chatd.streaming import chat_events, stream_response
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


@bp.post("/chat")
def dispatch():
    """Route one chat request to its provider and answer in chatd's shape."""
    registry = current_app.extensions["chatd"].registry
    chat_request = build_chat_request(parse_json(read_body()))
    route = resolve_model(chat_request.model)
    request.provider, request.model = route.provider, chat_request.model
    adapter = registry.get(route.provider)
    if chat_request.stream:
        upstream = adapter.open_stream(chat_request, route.upstream_model)
        return stream_response(chat_events(upstream, adapter, route), upstream)
    started = time.monotonic()
    answer = adapter.chat(chat_request, route.upstream_model)
    return {
        "model": route.upstream_model,
        "provider": route.provider,
        **answer,
        "latency_ms": int((time.monotonic() - started) * 1000),
    }


@bp.get("/chat/providers")
def list_providers():
    """List the registered providers and whether each can take calls now."""
    registry = current_app.extensions["chatd"].registry
    return {
        "providers": {name: registry.available(name) for name in registry.names()},
        "disabled": sorted(registry.disabled),
        # What to set to register the others; names of env vars and files, never values.
        "unregistered": {name: u.hint() for name, u in registry.unregistered.items()},
    }
