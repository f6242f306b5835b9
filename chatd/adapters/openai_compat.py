"""chatd.adapters.openai_compat ~~~ OpenAI chat completions (OpenRouter, OpenCode, Kimi, vLLM...).

chatd's neutral request is already OpenAI's shape, so this is close to a
pass-through: the model id is swapped and ``format`` becomes
``response_format``. Streams are SSE; usage is asked for with
``stream_options.include_usage`` and arrives in a last chunk with no choices.
"""

from __future__ import annotations

from chatd import codec
from chatd.adapters.base import ChatAdapter, copy_fields, count
from chatd.adapters.framing import iter_sse_events
from chatd.neutral import KNOBS, ChatRequest, Event, Reply, ToolCall, ToolCallDelta, Usage

# chatd's fields that OpenAI's body takes under the same names, at the top level:
# the shared knobs too (top_k is not OpenAI's, but OpenRouter, vLLM and Kimi take it).
BODY_NAMES = {
    name: name
    for name in ("temperature", "top_p", "max_tokens", "stop", "seed", "tool_choice", *KNOBS)
}
# Reasoning text arrives under different names; the neutral shapes call it "thinking".
REASONING_KEYS = ("reasoning", "reasoning_content")


def response_format(format_: str | dict) -> dict:
    """Map chatd's ``format`` to OpenAI's ``response_format``."""
    if format_ == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": format_}}


def _usage(data: dict) -> Usage | None:
    counts = data.get("usage")
    if not isinstance(counts, dict):
        return None
    return Usage(count(counts.get("prompt_tokens")), count(counts.get("completion_tokens")))


def _thinking(message: dict) -> str:
    for key in REASONING_KEYS:
        if message.get(key):
            return message[key]
    return ""


def _arguments(function: dict) -> str:
    arguments = function.get("arguments")
    if arguments is None:
        return ""
    # Some OpenAI-style servers send an object; the neutral shape is JSON text.
    return arguments if isinstance(arguments, str) else codec.dumps(arguments).decode()


class OpenAIChatAdapter(ChatAdapter):
    wire = "openai"
    chat_path = "/chat/completions"
    models_path = "/models"
    iter_events = staticmethod(iter_sse_events)
    options_from = frozenset({"chatd", "openai"})

    def build_body(self, request: ChatRequest, upstream_model: str) -> dict:
        body = {"model": upstream_model, "messages": request.messages, "stream": request.stream}
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        copy_fields(request, BODY_NAMES, body)
        if request.format is not None:
            body["response_format"] = response_format(request.format)
        if request.tools:
            body["tools"] = request.tools
        self.merge_options(body, self.options_for(request))
        return body

    def parse_reply(self, data: dict) -> Reply:
        choice = data["choices"][0]
        upstream = choice["message"]
        calls = [
            ToolCall(call["id"], call["function"]["name"], _arguments(call["function"]) or "{}")
            for call in upstream.get("tool_calls") or ()
        ]
        return Reply(
            content=upstream.get("content") or "",
            thinking=_thinking(upstream),
            tool_calls=calls,
            finish_reason=choice.get("finish_reason"),
            usage=_usage(data) or Usage(),
        )

    def stream_reader(self):
        return _read_chunk

    def parse_models(self, data: dict) -> list[str]:
        return [model["id"] for model in data["data"]]


def _read_chunk(event: dict) -> Event:
    out = Event(usage=_usage(event), raw=event)
    choices = event.get("choices")
    if choices:
        choice = choices[0]
        delta = choice.get("delta") or {}
        out.content = delta.get("content") or ""
        out.thinking = _thinking(delta)
        if delta.get("tool_calls"):
            out.tool_calls = [
                ToolCallDelta(
                    call.get("index", i),
                    call.get("id"),
                    (call.get("function") or {}).get("name"),
                    _arguments(call.get("function") or {}),
                )
                for i, call in enumerate(delta["tool_calls"])
            ]
        out.finish_reason = choice.get("finish_reason")
    return out
