"""chatd.adapters.ollama_native ~~~ Ollama's native ``POST /api/chat`` (local and Cloud).

Ollama takes sampling parameters inside ``options`` (``max_tokens`` is
``num_predict``, ``stop`` is always a list) and a few knobs at the top level;
it streams NDJSON and reports tokens as ``prompt_eval_count``/``eval_count``.
Reading answers into the neutral shapes follows Ollama's own OpenAI
compatibility layer (``openai/openai.go``): tool-call arguments become JSON
text, a stop with tool calls becomes the finish reason ``tool_calls``.
"""

from __future__ import annotations

import uuid

from chatd import codec
from chatd.adapters.base import ChatAdapter, copy_fields, count
from chatd.adapters.framing import iter_ndjson
from chatd.errors import BadRequest
from chatd.neutral import (
    STOP,
    TOOL_CALLS,
    ChatRequest,
    Event,
    Reply,
    ToolCall,
    ToolCallDelta,
    Usage,
)

# chatd's sampling fields and their names inside Ollama's `options`.
OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "num_predict",
    "stop": "stop",
    "seed": "seed",
}
# Shared knobs (chatd.neutral.KNOBS) Ollama reads inside `options`, same names.
KNOB_OPTIONS = {"presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
KNOB_OPTIONS["top_k"] = "top_k"
# OpenAI's reasoning efforts that Ollama's `think` has no level for: the nearest.
THINK = {"none": False, "minimal": "low", "xhigh": "high"}
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


def _tool_call(call: dict) -> ToolCall:
    function = call["function"]
    arguments = function.get("arguments")
    return ToolCall(
        # Newer Ollama sends an id; older ones none, and OpenAI clients need one.
        id=call.get("id") or f"call_{uuid.uuid4().hex[:12]}",
        name=function["name"],
        arguments=arguments
        if isinstance(arguments, str)
        else codec.dumps(arguments or {}).decode(),
    )


def _usage(data: dict) -> Usage:
    return Usage(count(data.get("prompt_eval_count")), count(data.get("eval_count")))


def _finish(done_reason, tool_calls: bool) -> str:
    # As Ollama's own OpenAI layer does: a stop after tool calls is "tool_calls".
    if tool_calls:
        return TOOL_CALLS
    return done_reason or STOP


class OllamaChatAdapter(ChatAdapter):
    wire = "ollama"
    chat_path = "/api/chat"
    models_path = "/api/tags"
    iter_events = staticmethod(iter_ndjson)
    # A /v1 client's OpenAI fields are sent too, less OPENAI_ONLY_KEYS.
    options_from = frozenset({"chatd", "openai"})

    def build_body(self, request: ChatRequest, upstream_model: str) -> dict:
        if request.dialect == "ollama" and request.native and "messages" in request.native:
            # An Ollama client: its own body is already this format.
            return {**request.native, "model": upstream_model, "stream": request.stream}
        body = {
            "model": upstream_model,
            "messages": [_ollama_message(m) for m in request.messages],
            "stream": request.stream,
        }
        options = {}
        copy_fields(request, OPTION_NAMES, options)
        copy_fields(request, KNOB_OPTIONS, options)
        if request.format is not None:
            body["format"] = request.format
        if request.tools:
            body["tools"] = request.tools
        # NOTE: Ollama has no tool_choice or parallel_tool_calls; not sent rather than rejected.
        extras = self.options_for(request)
        for key, value in extras.items():
            if key in TOP_LEVEL_KEYS:
                body[key] = value
            elif key not in OPENAI_ONLY_KEYS:
                options[key] = value
        # A /chat caller may still name it in options, as before it was a field.
        effort = request.reasoning_effort or extras.get("reasoning_effort")
        if effort is not None and "think" not in body:
            # OpenAI's reasoning_effort is Ollama's think level (low/medium/high).
            body["think"] = THINK.get(effort, effort) if isinstance(effort, str) else effort
        if options:
            body["options"] = options
        return body

    def parse_reply(self, data: dict) -> Reply:
        upstream = data["message"]
        calls = [_tool_call(call) for call in upstream.get("tool_calls") or ()]
        return Reply(
            content=upstream.get("content") or "",
            thinking=upstream.get("thinking") or "",
            tool_calls=calls,
            finish_reason=_finish(data.get("done_reason"), bool(calls)),
            usage=_usage(data),
        )

    def stream_reader(self):
        calls = 0

        def read(event: dict) -> Event | None:
            nonlocal calls
            upstream = event.get("message") or {}
            out = Event(
                content=upstream.get("content") or "",
                thinking=upstream.get("thinking") or "",
                raw=event,
            )
            if upstream.get("tool_calls"):
                # Ollama sends each call whole: one piece carries all of it.
                out.tool_calls = []
                for call in upstream["tool_calls"]:
                    whole = _tool_call(call)
                    out.tool_calls.append(
                        ToolCallDelta(calls, whole.id, whole.name, whole.arguments)
                    )
                    calls += 1
            if event.get("done"):
                out.finish_reason = _finish(event.get("done_reason"), bool(calls))
                out.usage = _usage(event)
            return out

        return read

    def parse_models(self, data: dict) -> list[str]:
        return [model["name"] for model in data["models"]]
