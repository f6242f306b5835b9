"""chatd.adapters.openai_compat ~~~ OpenAI chat completions (OpenRouter, OpenCode Zen, Kimi).

chatd's request shape is already OpenAI's, so this is close to a
pass-through: the model id is swapped and ``format`` becomes
``response_format``. Streams are SSE; usage is asked for with
``stream_options.include_usage`` and arrives in a last chunk with no choices.
"""

from __future__ import annotations

from chatd.adapters.base import ChatAdapter, ChunkContext, copy_fields, usage
from chatd.adapters.framing import iter_sse_events
from chatd.validation import ChatRequest

# chatd's fields that OpenAI's body takes under the same names, at the top level.
BODY_NAMES = {
    name: name for name in ("temperature", "top_p", "max_tokens", "stop", "seed", "tool_choice")
}
# Reasoning text arrives under different names; /chat calls it "thinking" as Ollama does.
REASONING_KEYS = ("reasoning", "reasoning_content")


def response_format(format_: str | dict) -> dict:
    """Map chatd's ``format`` to OpenAI's ``response_format``."""
    if format_ == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": format_}}


def _usage(data: dict) -> dict:
    counts = data.get("usage") or {}
    return usage(
        counts.get("prompt_tokens") or 0,
        counts.get("completion_tokens") or 0,
        counts.get("total_tokens"),
    )


def _thinking(message: dict) -> str | None:
    for key in REASONING_KEYS:
        if message.get(key):
            return message[key]
    return None


class OpenAIChatAdapter(ChatAdapter):
    wire = "openai"
    chat_path = "/chat/completions"
    models_path = "/models"
    iter_events = staticmethod(iter_sse_events)

    def build_body(self, request: ChatRequest, upstream_model: str) -> dict:
        body = {"model": upstream_model, "messages": request.messages, "stream": request.stream}
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        copy_fields(request, BODY_NAMES, body)
        if request.format is not None:
            body["response_format"] = response_format(request.format)
        if request.tools:
            body["tools"] = request.tools
        body.update(request.options)
        return body

    # -- chatd's /chat shape ---------------------------------------------------

    def parse_response(self, data: dict) -> dict:
        choice = data["choices"][0]
        upstream = choice["message"]
        message = {"role": "assistant", "content": upstream.get("content") or ""}
        if upstream.get("tool_calls"):
            message["tool_calls"] = upstream["tool_calls"]
        thinking = _thinking(upstream)
        if thinking:
            message["thinking"] = thinking
        return {
            "message": message,
            "done_reason": choice.get("finish_reason"),
            "usage": _usage(data),
        }

    def parse_event(self, event: dict) -> dict:
        parts = {}
        choices = event.get("choices") or []
        if choices:
            delta = choices[0].get("delta") or {}
            if delta.get("content"):
                parts["content"] = delta["content"]
            thinking = _thinking(delta)
            if thinking:
                parts["thinking"] = thinking
            if delta.get("tool_calls"):
                parts["tool_calls"] = delta["tool_calls"]
            if choices[0].get("finish_reason"):
                parts["done_reason"] = choices[0]["finish_reason"]
        if event.get("usage"):
            parts["usage"] = _usage(event)
        return parts

    # -- OpenAI's shapes: pass through, named as the client named the model ----

    def openai_response(self, data: dict, model: str) -> dict:
        data["choices"][0]["message"]  # an answer without a message is no answer
        data["model"] = model
        return data

    def openai_chunks(self, event: dict, context: ChunkContext) -> list[dict]:
        if not event.get("choices") and not context.include_usage:
            # A usage-only chunk the client did not ask for: SDK users index
            # choices[0] on every chunk.
            return []
        event["model"] = context.model
        return [event]

    def parse_models(self, data: dict) -> list[str]:
        return [model["id"] for model in data["data"]]
