"""chatd.dialects.anthropic ~~~ Anthropic's Messages API, as chatd's clients speak it.

:func:`parse_request` reads a ``POST /v1/messages`` body into a neutral
:class:`ChatRequest` (OpenAI chat-completions vocabulary), so any provider can
answer an Anthropic client; :func:`render_reply`, :func:`render_stream`,
:func:`error_body` and :func:`render_stream_error` answer in Anthropic's
shapes, streaming included, exactly as the official SDK reads them.
Everything here is pure: no Flask, no HTTP.

Fields a provider cannot use (``cache_control``, ``metadata``,
``context_management``, ``output_config``, ``service_tier``, server tools such
as ``web_search``) are accepted and dropped; the client's body stays in
``ChatRequest.native`` for a provider that speaks Anthropic itself.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Iterator

from chatd import codec
from chatd.errors import BadRequest
from chatd.neutral import CONTENT_FILTER, LENGTH, STOP, TOOL_CALLS, ChatRequest, Event, Reply
from chatd.validation import check_model_name, read_knobs

log = logging.getLogger("chatd.dialects.anthropic")

DIALECT = "anthropic"
ROLES = ("user", "assistant", "system")
# Neutral finish reasons as Anthropic names them; None (not said) is end_turn.
STOP_REASONS = {
    STOP: "end_turn",
    LENGTH: "max_tokens",
    TOOL_CALLS: "tool_use",
    CONTENT_FILTER: "refusal",
}
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
# Anthropic's error type for each status chatd answers with (docs.claude.com/en/api/errors);
# other 4xx are invalid_request_error and other 5xx api_error, as the SDK reads them.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
# Block types an assistant turn may carry that no other provider can take back:
# Anthropic signs its thinking, and only Anthropic can check the signature.
DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
# count_tokens' estimate: about four bytes of JSON per token.
BYTES_PER_TOKEN = 4


# -- reading a request -----------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text_of(blocks, where: str) -> str:
    """Join a string or a list of text blocks into one text."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise BadRequest(f"{where} must be a string or a list of text blocks")
    texts = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise BadRequest(f"{where}[{i}] must be a text block")
        if not isinstance(block.get("text"), str):
            raise BadRequest(f"{where}[{i}].text must be a string")
        texts.append(block["text"])
    return "\n\n".join(texts)


def _image_part(block: dict, where: str) -> dict:
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequest(f"{where}.source must be an object")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise BadRequest(f"{where}.source needs string media_type and data")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        url = source.get("url")
        if not isinstance(url, str):
            raise BadRequest(f"{where}.source.url must be a string")
    else:
        raise BadRequest(f"{where}.source.type must be base64 or url")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: dict, where: str) -> dict:
    """A tool_result block as an OpenAI ``tool`` turn."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{where}.tool_use_id must be a non-empty string")
    content = block.get("content", "")
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict):
                raise BadRequest(f"{where}.content[{i}] must be an object")
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                # A tool turn carries text only on most wires: say what was left out.
                texts.append(f"[{part.get('type')} block omitted]")
        content = "\n".join(texts)
    elif content is None:
        content = ""
    elif not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string or a list of blocks")
    if block.get("is_error"):
        content = f"[tool error] {content}"
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _tool_call(block: dict, where: str) -> dict:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str) or not name:
        raise BadRequest(f"{where} needs a string id and name")
    if not isinstance(arguments, dict):
        raise BadRequest(f"{where}.input must be an object")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": codec.dumps(arguments).decode()},
    }


def _read_turn(i: int, message, into: list) -> None:
    """Append the OpenAI messages that Anthropic message ``i`` becomes."""
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object")
    role = message.get("role")
    if role not in ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
    content = message.get("content")
    if role == "system":
        into.append({"role": "system", "content": _text_of(content, f"{where}.content")})
        return
    if isinstance(content, str):
        into.append({"role": role, "content": content})
        return
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of content blocks")
    parts, tool_calls, tool_turns = [], [], []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(kind, str):
            raise BadRequest(f"{at} must be an object with a string 'type'")
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise BadRequest(f"{at}.text must be a string")
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and role == "user":
            parts.append(_image_part(block, at))
        elif kind == "tool_result" and role == "user":
            tool_turns.append(_tool_result(block, at))
        elif kind == "tool_use" and role == "assistant":
            tool_calls.append(_tool_call(block, at))
        elif kind in DROPPED_BLOCKS and role == "assistant":
            continue
        else:
            raise BadRequest(f"{at}.type {kind!r} is not supported in a {role} turn")
    # OpenAI wants each tool answer right after the call, before any new user text.
    into.extend(tool_turns)
    if role == "assistant":
        text = "\n".join(part["text"] for part in parts)
        turn = {"role": "assistant", "content": text or (None if tool_calls else "")}
        if tool_calls:
            turn["tool_calls"] = tool_calls
        into.append(turn)
    elif parts or not tool_turns:
        if all(part["type"] == "text" for part in parts):
            into.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
        else:
            into.append({"role": "user", "content": parts})


def _read_messages(body: dict, system: str | None) -> list:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages is required and must be a non-empty list")
    # Claude Code sends a last turn with role "system" for a model it does not
    # know: fold it (and any like it at the end) into the system prompt.
    end = len(messages)
    trailing = []
    while (
        end > 0
        and isinstance(messages[end - 1], dict)
        and messages[end - 1].get("role") == "system"
    ):
        end -= 1
        trailing.insert(0, _text_of(messages[end].get("content"), f"messages[{end}].content"))
    if end == 0:
        raise BadRequest("messages must hold at least one user or assistant turn")
    prompt = "\n\n".join(text for text in (system, *trailing) if text)
    read: list = [{"role": "system", "content": prompt}] if prompt else []
    for i in range(end):
        _read_turn(i, messages[i], read)
    return read


def _read_tools(body: dict) -> list | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list of objects")
    read = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{i}] must be an object")
        if tool.get("type", "custom") not in ("custom", None):
            # A server tool (web_search, code_execution, ...) runs at Anthropic; no
            # other provider can run it, so the model is simply not offered it.
            log.debug("dropped server tool %r of type %r", tool.get("name"), tool.get("type"))
            continue
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools[{i}].name must be a non-empty string")
        if not isinstance(schema, dict):
            raise BadRequest(f"tools[{i}].input_schema must be an object")
        function = {"name": name, "parameters": schema}
        description = tool.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise BadRequest(f"tools[{i}].description must be a string")
            function["description"] = description
        read.append({"type": "function", "function": function})
    return read or None


def _read_tool_choice(body: dict, knobs: dict):
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise BadRequest("tool_choice must be an object with a string 'type'")
    kind = choice["type"]
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise BadRequest("tool_choice.disable_parallel_tool_use must be true or false")
    if parallel:
        knobs["parallel_tool_calls"] = False
    if kind in TOOL_CHOICES:
        return TOOL_CHOICES[kind]
    if kind == "tool":
        if not isinstance(choice.get("name"), str) or not choice["name"]:
            raise BadRequest("tool_choice.name must be a non-empty string")
        return {"type": "function", "function": {"name": choice["name"]}}
    raise BadRequest("tool_choice.type must be auto, any, tool or none")


def _optional_number(body: dict, name: str) -> float | None:
    value = body.get(name)
    if value is not None and (not _is_number(value) or value < 0):
        raise BadRequest(f"{name} must be a number of at least 0")
    return value


def parse_request(body) -> ChatRequest:
    """Check an Anthropic Messages body and read it into a ChatRequest.

    :raises BadRequest: naming the first field that is missing or malformed.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = check_model_name(body.get("model"), "model")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise BadRequest("max_tokens is required")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise BadRequest("max_tokens must be a positive integer")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false")
    stop = body.get("stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("stop_sequences must be a list of strings")
    system = body.get("system")
    system = None if system is None else _text_of(system, "system")
    thinking = body.get("thinking")
    if thinking is not None and not (isinstance(thinking, dict) and "type" in thinking):
        raise BadRequest("thinking must be an object with a 'type'")
    knobs = read_knobs(body, ("top_k",))
    tools = _read_tools(body)
    tool_choice = _read_tool_choice(body, knobs)
    if tools is None:
        # Nothing left to choose from (only server tools, or none at all).
        tool_choice = None
        knobs.pop("parallel_tool_calls", None)
    return ChatRequest(
        model=model,
        messages=_read_messages(body, system),
        temperature=_optional_number(body, "temperature"),
        top_p=_optional_number(body, "top_p"),
        max_tokens=max_tokens,
        stop=stop or None,
        tools=tools,
        tool_choice=tool_choice,
        stream=stream,
        dialect=DIALECT,
        native=body,
        **knobs,
    )


def count_tokens(body) -> int:
    """Estimate a count_tokens body's input tokens: JSON bytes of system, messages
    and tools over four, rounded up. Not a tokenizer's count; a bound to plan with."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    check_model_name(body.get("model"), "model")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise BadRequest("messages is required and must be a non-empty list")
    counted = {key: body[key] for key in ("system", "messages", "tools") if key in body}
    return math.ceil(len(codec.dumps(counted)) / BYTES_PER_TOKEN)


# -- answering -------------------------------------------------------------------


def message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def _tool_input(arguments: str) -> dict:
    """A tool call's JSON text as the object Anthropic's ``input`` is."""
    if not arguments or not arguments.strip():
        return {}
    try:
        value = codec.loads(arguments)
    except codec.DecodeError:
        value = None
    # A model that wrote broken JSON: hand its text on, so the tool's own
    # validation error reaches the model and it can try again.
    return value if isinstance(value, dict) else {"arguments": arguments}


def stop_reason(finish_reason: str | None, called_tools: bool) -> str:
    # Ollama says "stop" even when it called tools; the client must see tool_use.
    if called_tools and finish_reason in (None, STOP, TOOL_CALLS):
        return "tool_use"
    return STOP_REASONS.get(finish_reason, "end_turn")


def render_reply(reply: Reply, model: str, passthrough: bool = False) -> dict:
    """A whole answer as Anthropic's Message; ``model`` is the name the client used.

    ``passthrough``: the upstream spoke Anthropic too, and its answer is given
    as it came (thinking signatures, citations, server tool blocks kept).
    """
    if passthrough and reply.raw is not None:
        return {**reply.raw, "model": model}
    content = []
    if reply.thinking:
        content.append({"type": "thinking", "thinking": reply.thinking, "signature": ""})
    if reply.content or not reply.tool_calls:
        content.append({"type": "text", "text": reply.content})
    for call in reply.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": call.id or "toolu_" + secrets.token_hex(12),
                "name": call.name,
                "input": _tool_input(call.arguments),
            }
        )
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(reply.finish_reason, bool(reply.tool_calls)),
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.usage.prompt_tokens,
            "output_tokens": reply.usage.completion_tokens,
        },
    }


def sse(kind: str, data: dict) -> bytes:
    """One server-sent event; the SDK dispatches on the ``event:`` name."""
    return b"event: " + kind.encode() + b"\ndata: " + codec.dumps(data) + b"\n\n"


class _Blocks:
    """The content blocks of one streamed message: opened and closed as the kind
    of what arrives changes, indexed from 0."""

    def __init__(self):
        self.count = 0
        # ("thinking",), ("text",) or ("tool", upstream index), or None.
        self.current: tuple | None = None
        self.called_tools = False

    def switch(self, key: tuple, block: dict) -> list[bytes]:
        if key == self.current:
            return []
        out = self.close()
        self.current = key
        out.append(
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": self.count, "content_block": block},
            )
        )
        return out

    def delta(self, delta: dict) -> bytes:
        return sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.count, "delta": delta},
        )

    def close(self) -> list[bytes]:
        if self.current is None:
            return []
        self.current = None
        self.count += 1
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self.count - 1})]


def render_stream(
    events: Iterator[Event], model: str, passthrough: bool = False
) -> Iterator[bytes]:
    """Anthropic's stream for neutral ``events``: message_start, the content blocks,
    message_delta (stop reason, usage), message_stop.

    ``passthrough``: the upstream spoke Anthropic too, and its own events are
    relayed, named with the client's model (a thinking block's signature must
    reach the client, or it cannot send the block back with a tool result).
    A ChatdError raised by ``events`` propagates: the caller writes the error event.
    """
    if passthrough:
        yield from _relayed(events, model)
        return
    yield sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": message_id(),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                # Upstreams count tokens at the end; message_delta carries both counts.
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        },
    )
    blocks = _Blocks()
    finish_reason, usage = None, None
    for event in events:
        if event.thinking:
            yield from blocks.switch(
                ("thinking",), {"type": "thinking", "thinking": "", "signature": ""}
            )
            yield blocks.delta({"type": "thinking_delta", "thinking": event.thinking})
        if event.content:
            yield from blocks.switch(("text",), {"type": "text", "text": ""})
            yield blocks.delta({"type": "text_delta", "text": event.content})
        for call in event.tool_calls or ():
            key = ("tool", call.index)
            if key != blocks.current:
                blocks.called_tools = True
                block = {
                    "type": "tool_use",
                    "id": call.id or "toolu_" + secrets.token_hex(12),
                    "name": call.name or "",
                    "input": {},
                }
                yield from blocks.switch(key, block)
            if call.arguments:
                yield blocks.delta({"type": "input_json_delta", "partial_json": call.arguments})
        if event.finish_reason:
            finish_reason = event.finish_reason
        if event.usage is not None:
            usage = event.usage
    if blocks.count == 0 and blocks.current is None:
        # An empty answer is still one (empty) text block, as Anthropic sends it.
        yield from blocks.switch(("text",), {"type": "text", "text": ""})
    yield from blocks.close()
    counts = {"output_tokens": 0}
    if usage is not None:
        counts = {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
    yield sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": stop_reason(finish_reason, blocks.called_tools),
                "stop_sequence": None,
            },
            "usage": counts,
        },
    )
    yield sse("message_stop", {"type": "message_stop"})


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, message: str, request_id: str = "", **details) -> dict:
    """Anthropic's error envelope; chatd's own fields (provider, ...) ride along."""
    body = {"type": "error", "error": {"type": error_type(status), "message": message, **details}}
    if request_id:
        body["request_id"] = request_id
    return body


# chatd's error types as Anthropic names them, for a stream cut after the 200
# (chatd.streaming hands the dialect chatd's error body, not the status).
CHATD_ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "unauthorized": "authentication_error",
    "provider_not_found": "not_found_error",
    "rate_limited": "rate_limit_error",
    "provider_disabled": "overloaded_error",
    "provider_busy": "overloaded_error",
    "overloaded": "overloaded_error",
}


def _relayed(events: Iterator[Event], model: str) -> Iterator[bytes]:
    for event in events:
        raw = event.raw
        if raw.get("type") == "message_start" and isinstance(raw.get("message"), dict):
            raw["message"]["model"] = model
        yield sse(raw.get("type", "message"), raw)


def render_stream_error(body: dict) -> bytes:
    """chatd's error body (from chatd.streaming.cut) as Anthropic's in-band error event."""
    error = dict(body["error"])
    chatd_type = error.pop("type", "")
    error.pop("code", None)
    request_id = error.pop("request_id", "")
    error["type"] = CHATD_ERROR_TYPES.get(chatd_type, "api_error")
    envelope = {"type": "error", "error": {"type": error.pop("type"), **error}}
    if request_id:
        envelope["request_id"] = request_id
    return sse("error", envelope)
