"""chatd.adapters.ollama_native ~~~ Ollama's native ``POST /api/chat`` (local and Cloud).

Ollama takes sampling parameters inside ``options`` (``max_tokens`` is
``num_predict``, ``stop`` is always a list) and a few knobs at the top level;
it streams NDJSON and reports tokens as ``prompt_eval_count``/``eval_count``.
Translating to OpenAI's shapes follows Ollama's own compatibility layer
(``openai/openai.go``): tool-call arguments become JSON strings, a stop with
tool calls becomes ``finish_reason: "tool_calls"``.
"""

from __future__ import annotations

import time
import uuid

from chatd import codec
from chatd.adapters.base import ChatAdapter, ChunkContext, copy_fields, usage
from chatd.adapters.framing import iter_ndjson
from chatd.errors import BadRequest
from chatd.validation import ChatRequest

# chatd's sampling fields and their names inside Ollama's `options`.
OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "num_predict",
    "stop": "stop",
    "seed": "seed",
}
# Native knobs that Ollama reads beside `options`, not inside it: a caller's
# `options` may carry them and they still land where Ollama looks.
TOP_LEVEL_KEYS = frozenset({"keep_alive", "think", "logprobs", "top_logprobs"})
# OpenAI request fields (arriving through /v1 in `options`) that Ollama has no
# use for, or takes under another name: not sent as options.
OPENAI_ONLY_KEYS = frozenset(
    {
        "response_format",
        "n",
        "user",
        "logit_bias",
        "parallel_tool_calls",
        "store",
        "metadata",
        "service_tier",
        "reasoning_effort",
        "prompt_cache_key",
    }
)


def _ollama_message(message: dict) -> dict:
    """Return ``message`` as Ollama reads it; the same object when it already is.

    OpenAI-style turns carry content parts and tool-call arguments as JSON
    strings; Ollama wants a content string, base64 ``images`` and argument objects.
    """
    if message.get("role") == "developer":
        message = {**message, "role": "system"}
    content = message.get("content")
    tool_calls = message.get("tool_calls")
    needs_args = tool_calls and any(
        isinstance(call.get("function", {}).get("arguments"), str) for call in tool_calls
    )
    if not isinstance(content, list) and not needs_args:
        return message
    message = dict(message)
    if isinstance(content, list):
        texts, images = [], list(message.get("images") or [])
        for part in content:
            if part["type"] == "text":
                texts.append(part.get("text", ""))
            elif part["type"] == "image_url":
                url = part.get("image_url", {}).get("url", "")
                if not url.startswith("data:") or "," not in url:
                    raise BadRequest("messages: Ollama takes images only as data: URLs")
                images.append(url.split(",", 1)[1])
        message["content"] = "\n".join(texts)
        if images:
            message["images"] = images
    if needs_args:
        message["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": _arguments(call)}}
            for call in tool_calls
        ]
    return message


def _arguments(call: dict):
    arguments = call.get("function", {}).get("arguments")
    if not isinstance(arguments, str):
        return arguments
    try:
        return codec.loads(arguments or "{}")
    except codec.DecodeError:
        raise BadRequest("messages: tool call arguments must be a JSON object") from None


def _openai_tool_calls(calls: list, first_index: int = 0) -> list[dict]:
    return [
        {
            "index": first_index + i,
            "id": call.get("id") or f"call_{uuid.uuid4().hex[:12]}",
            "type": "function",
            "function": {
                "name": call["function"]["name"],
                "arguments": codec.dumps(call["function"].get("arguments") or {}).decode(),
            },
        }
        for i, call in enumerate(calls)
    ]


def _usage(data: dict) -> dict:
    return usage(data.get("prompt_eval_count") or 0, data.get("eval_count") or 0)


class OllamaChatAdapter(ChatAdapter):
    wire = "ollama"
    chat_path = "/api/chat"
    models_path = "/api/tags"
    iter_events = staticmethod(iter_ndjson)

    def build_body(self, request: ChatRequest, upstream_model: str) -> dict:
        body = {
            "model": upstream_model,
            "messages": [_ollama_message(m) for m in request.messages],
            "stream": request.stream,
        }
        options = {}
        copy_fields(request, OPTION_NAMES, options)
        if request.format is not None:
            body["format"] = request.format
        if request.tools:
            body["tools"] = request.tools
        # NOTE: Ollama has no tool_choice; it is not sent rather than rejected.
        for key, value in request.options.items():
            if key in TOP_LEVEL_KEYS:
                body[key] = value
            elif key not in OPENAI_ONLY_KEYS:
                options[key] = value
        effort = request.options.get("reasoning_effort")
        if effort is not None and "think" not in body:
            # OpenAI's reasoning_effort is Ollama's think level (low/medium/high).
            body["think"] = effort
        if options:
            body["options"] = options
        return body

    # -- chatd's /chat shape ---------------------------------------------------

    def parse_response(self, data: dict) -> dict:
        upstream = data["message"]
        message = {"role": "assistant", "content": upstream.get("content") or ""}
        if upstream.get("tool_calls"):
            message["tool_calls"] = upstream["tool_calls"]
        if upstream.get("thinking"):
            message["thinking"] = upstream["thinking"]
        return {"message": message, "done_reason": data.get("done_reason"), "usage": _usage(data)}

    def parse_event(self, event: dict) -> dict:
        upstream = event.get("message") or {}
        parts = {}
        if upstream.get("content"):
            parts["content"] = upstream["content"]
        if upstream.get("thinking"):
            parts["thinking"] = upstream["thinking"]
        if upstream.get("tool_calls"):
            parts["tool_calls"] = upstream["tool_calls"]
        if event.get("done"):
            parts["done_reason"] = event.get("done_reason")
            parts["usage"] = _usage(event)
        return parts

    # -- OpenAI's shapes -------------------------------------------------------

    def openai_response(self, data: dict, model: str) -> dict:
        upstream = data["message"]
        message = {"role": "assistant", "content": upstream.get("content") or ""}
        if upstream.get("tool_calls"):
            message["tool_calls"] = [
                {k: v for k, v in call.items() if k != "index"}
                for call in _openai_tool_calls(upstream["tool_calls"])
            ]
        if upstream.get("thinking"):
            message["reasoning"] = upstream["thinking"]
        finish = "tool_calls" if upstream.get("tool_calls") else data.get("done_reason") or "stop"
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            ],
            "usage": _usage(data),
        }

    def openai_chunks(self, event: dict, context: ChunkContext) -> list[dict]:
        if not context.id:
            context.id = f"chatcmpl-{uuid.uuid4().hex}"
            context.created = int(time.time())
            delta = {"role": "assistant", "content": ""}
        else:
            delta = {}
        upstream = event.get("message") or {}
        if upstream.get("content"):
            delta["content"] = upstream["content"]
        if upstream.get("thinking"):
            delta["reasoning"] = upstream["thinking"]
        if upstream.get("tool_calls"):
            # Ollama sends each call whole; OpenAI clients take a whole call as one fragment.
            delta["tool_calls"] = _openai_tool_calls(upstream["tool_calls"], context.tool_calls)
            context.tool_calls += len(upstream["tool_calls"])
        chunks = [self._chunk(context, delta, None)] if delta else []
        if event.get("done"):
            finish = "tool_calls" if context.tool_calls else event.get("done_reason") or "stop"
            chunks.append(self._chunk(context, {}, finish))
            if context.include_usage:
                chunks.append(
                    {**self._chunk(context, {}, None), "choices": [], "usage": _usage(event)}
                )
        return chunks

    @staticmethod
    def _chunk(context: ChunkContext, delta: dict, finish_reason: str | None) -> dict:
        return {
            "id": context.id,
            "object": "chat.completion.chunk",
            "created": context.created,
            "model": context.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def parse_models(self, data: dict) -> list[str]:
        return [model["name"] for model in data["models"]]
