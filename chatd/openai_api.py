"""chatd.openai_api ~~~ The OpenAI-compatible surface under ``/v1``.

Any OpenAI SDK, LangChain or curl script can point its ``base_url`` at
``http://chatd/v1`` and reach every provider through chatd's routing table
(``model="ollama/llama3.2"``). Errors keep the same status codes as ``/chat``
and their body is already OpenAI's envelope. ``/v1/chat`` and
``/v1/chat/providers`` are aliases of ``/chat`` and ``/chat/providers``, so
chatd can stand where a gateway's paths point.
"""

from __future__ import annotations

from flask import Blueprint, current_app, request

from chatd import chat
from chatd.adapters.base import ChunkContext
from chatd.routing import resolve_model
from chatd.streaming import openai_events, stream_response
from chatd.validation import build_openai_request, parse_json

bp = Blueprint("openai", __name__, url_prefix="/v1")


@bp.post("/chat/completions")
def chat_completions():
    """Answer an OpenAI chat-completions request, streamed or whole."""
    registry = current_app.extensions["chatd"].registry
    chat_request, include_usage = build_openai_request(parse_json(chat.read_body()))
    route = resolve_model(chat_request.model)
    request.provider, request.model = route.provider, chat_request.model
    adapter = registry.get(route.provider)
    if chat_request.stream:
        upstream = adapter.open_stream(chat_request, route.upstream_model)
        context = ChunkContext(model=chat_request.model, include_usage=include_usage)
        return stream_response(openai_events(upstream, adapter, context), upstream)
    data = adapter.complete(chat_request, route.upstream_model)
    return adapter.translate(adapter.openai_response, data, chat_request.model)


@bp.get("/models")
def list_models():
    """List what every registered provider serves, named as chatd routes it."""
    registry = current_app.extensions["chatd"].registry
    return {"object": "list", "data": registry.list_models()}


bp.add_url_rule("/chat", "dispatch", chat.dispatch, methods=["POST"])
bp.add_url_rule("/chat/providers", "list_providers", chat.list_providers, methods=["GET"])
