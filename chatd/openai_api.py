"""chatd.openai_api ~~~ The OpenAI-compatible surface under ``/v1``.

Any OpenAI SDK, LangChain or curl script can point its ``base_url`` at
``http://chatd/v1`` and reach every provider through chatd's routing table
(``model="ollama/llama3.2"``). Errors keep the same status codes as ``/chat``
and their body is already OpenAI's envelope. ``/v1/chat`` and
``/v1/chat/providers`` are aliases of ``/chat`` and ``/chat/providers``, so
chatd can stand where a gateway's paths point.
"""

from __future__ import annotations

from flask import Blueprint, current_app

from chatd import chat
from chatd.answer import Rendering, answer, read_body
from chatd.dialects import openai as dialect
from chatd.errors import ModelNotFound
from chatd.validation import build_openai_request, parse_json

bp = Blueprint("openai", __name__, url_prefix="/v1")


@bp.post("/chat/completions")
def chat_completions():
    """Answer an OpenAI chat-completions request, streamed or whole."""
    chat_request, include_usage = build_openai_request(parse_json(read_body()))
    # An OpenAI-wire upstream's own answer and chunks pass through, renamed.
    rendering = Rendering(
        reply=lambda reply, outcome: dialect.render_reply(
            reply, outcome.model, outcome.adapter.wire == "openai"
        ),
        stream=lambda events, outcome: dialect.render_stream(
            events, outcome.model, include_usage, outcome.adapter.wire == "openai"
        ),
        stream_error=dialect.render_stream_error,
    )
    return answer(chat_request, rendering)


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
