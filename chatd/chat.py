"""chatd.chat ~~~ The dispatch routes: ``POST /chat`` and ``GET /chat/providers``.

``GET /providers`` answers like ``/chat/providers``: the seed's Go service named it so.

Views stay thin: validate, resolve, look up, call, answer. They hold no
``try``: the error table in :mod:`chatd.errors` maps every failure.
"""

from __future__ import annotations

from flask import Blueprint, current_app

from chatd.answer import Rendering, answer, read_body
from chatd.dialects import chat as dialect
from chatd.validation import build_chat_request, parse_json

bp = Blueprint("chat", __name__)


# chatd's own shape, and the upstream time of the attempt that served (no queueing,
# no retry sleeps) as latency_ms.
RENDERING = Rendering(
    reply=lambda reply, outcome: {
        **dialect.render_reply(reply, outcome.route),
        "latency_ms": int(outcome.upstream_secs * 1000),
    },
    stream=lambda events, outcome: dialect.render_stream(events, outcome.route),
    stream_error=dialect.render_stream_error,
)


@bp.post("/chat")
def dispatch():
    """Route one chat request to its provider and answer in chatd's shape."""
    return answer(build_chat_request(parse_json(read_body())), RENDERING)


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
