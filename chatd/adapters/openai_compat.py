"""chatd.adapters.openai_compat ~~~ OpenAI chat completions (OpenRouter, OpenCode Zen, Kimi).

chatd's request shape is already OpenAI's, so this is close to a
pass-through: the model id is swapped and ``format`` becomes ``response_format``.
"""

from __future__ import annotations

from chatd.adapters.base import ChatAdapter
from chatd.validation import ChatRequest

# Reasoning text arrives under different names; /chat calls it "thinking" as Ollama does.
REASONING_KEYS = ("reasoning", "reasoning_content")


def response_format(format_: str | dict) -> dict:
    """Map chatd's ``format`` to OpenAI's ``response_format``."""
    if format_ == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": format_}}


class OpenAIChatAdapter(ChatAdapter):
    wire = "openai"
    chat_path = "/chat/completions"

    def build_body(self, request: ChatRequest, upstream_model: str) -> dict:
        body = {"model": upstream_model, "messages": request.messages, "stream": request.stream}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.stop is not None:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        if request.format is not None:
            body["response_format"] = response_format(request.format)
        if request.tools:
            body["tools"] = request.tools
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
        body.update(request.options)
        return body

    def parse_response(self, data: dict) -> dict:
        choice = data["choices"][0]
        upstream = choice["message"]
        message = {"role": "assistant", "content": upstream.get("content") or ""}
        if upstream.get("tool_calls"):
            message["tool_calls"] = upstream["tool_calls"]
        for key in REASONING_KEYS:
            if upstream.get(key):
                message["thinking"] = upstream[key]
                break
        usage = data.get("usage") or {}
        prompt = usage.get("prompt_tokens") or 0
        completion = usage.get("completion_tokens") or 0
        return {
            "message": message,
            "done_reason": choice.get("finish_reason"),
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": usage.get("total_tokens") or prompt + completion,
            },
        }
