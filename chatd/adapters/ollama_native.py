"""chatd.adapters.ollama_native ~~~ Ollama's native ``POST /api/chat`` (local and Cloud).

Ollama takes sampling parameters inside ``options`` (``max_tokens`` is
``num_predict``, ``stop`` is always a list) and a few knobs at the top level;
it answers with token counts as ``prompt_eval_count``/``eval_count``.
"""

from __future__ import annotations

from chatd.adapters.base import ChatAdapter
from chatd.validation import ChatRequest

# Native knobs that Ollama reads beside `options`, not inside it: a caller's
# `options` may carry them and they still land where Ollama looks.
TOP_LEVEL_KEYS = frozenset({"keep_alive", "think", "logprobs", "top_logprobs"})


class OllamaChatAdapter(ChatAdapter):
    wire = "ollama"
    chat_path = "/api/chat"

    def build_body(self, request: ChatRequest, upstream_model: str) -> dict:
        body = {"model": upstream_model, "messages": request.messages, "stream": request.stream}
        options = {}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.top_p is not None:
            options["top_p"] = request.top_p
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if request.stop is not None:
            options["stop"] = request.stop
        if request.seed is not None:
            options["seed"] = request.seed
        if request.format is not None:
            body["format"] = request.format
        if request.tools:
            body["tools"] = request.tools
        # NOTE: Ollama has no tool_choice; it is not sent rather than rejected.
        for key, value in request.options.items():
            if key in TOP_LEVEL_KEYS:
                body[key] = value
            else:
                options[key] = value
        if options:
            body["options"] = options
        return body

    def parse_response(self, data: dict) -> dict:
        upstream = data["message"]
        message = {"role": "assistant", "content": upstream.get("content") or ""}
        if upstream.get("tool_calls"):
            message["tool_calls"] = upstream["tool_calls"]
        if upstream.get("thinking"):
            message["thinking"] = upstream["thinking"]
        prompt = data.get("prompt_eval_count") or 0
        completion = data.get("eval_count") or 0
        return {
            "message": message,
            "done_reason": data.get("done_reason"),
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
