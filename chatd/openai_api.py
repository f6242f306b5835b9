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
from chatd.dialects import openai as dialect
from chatd.errors import ModelNotFound
from chatd.streaming import counted, stream_response
from chatd.validation import build_openai_request, parse_json

bp = Blueprint("openai", __name__, url_prefix="/v1")


@bp.post("/chat/completions")
def chat_completions():
    """Answer an OpenAI chat-completions request, streamed or whole."""
    dispatcher = current_app.extensions["chatd"].dispatcher
    record = request.record
    chat_request, include_usage = build_openai_request(parse_json(chat.read_body()))
    if chat_request.stream:
        outcome = dispatcher.run(chat_request, chat.open_stream(chat_request), record)
        upstream = outcome.result
        passthrough = outcome.adapter.wire == "openai"
        rendered = dialect.render_stream(
            counted(upstream, record), outcome.model, include_usage, passthrough
        )
        response = stream_response(rendered, upstream, record, dialect.render_stream_error)
        response.headers.update(chat.fallback_headers(outcome))
        return response
    outcome = dispatcher.run(chat_request, chat.get_reply(chat_request), record)
    reply = outcome.result
    record.count_tokens(reply.usage.as_dict())
    body = dialect.render_reply(reply, outcome.model, outcome.adapter.wire == "openai")
    return body, 200, chat.fallback_headers(outcome)


@bp.get("/models")
def list_models():
    """List what every registered provider serves, named as chatd routes it."""
    registry = current_app.extensions["chatd"].registry
    return {"object": "list", "data": registry.list_models()}


@bp.get("/models/<path:model_id>")
def retrieve_model(model_id: str):
    """One model of /v1/models (the OpenAI SDK's ``models.retrieve``); 404 if none lists it."""
    registry = current_app.extensions["chatd"].registry
    for model in registry.list_models():
        if model["id"] == model_id:
            return model
    raise ModelNotFound(f"model {model_id!r} is not listed by any registered provider")


bp.add_url_rule("/chat", "dispatch", chat.dispatch, methods=["POST"])
bp.add_url_rule("/chat/providers", "list_providers", chat.list_providers, methods=["GET"])
