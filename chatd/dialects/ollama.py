"""chatd.dialects.ollama ~~~ Ollama's native API as a client dialect: /api/chat and /api/generate.

Reads an Ollama request (messages with base64 ``images``, tool calls whose
arguments are objects, ``tool_name`` on tool turns; or a generate
``prompt``/``system``; sampling knobs inside ``options``; ``stream`` true
unless said otherwise) into a :class:`~chatd.neutral.ChatRequest`, and renders
answers as Ollama does: one object, or NDJSON lines ending with a ``done``
line that carries ``done_reason``, token counts and durations in nanoseconds.

Knobs other APIs share (a ``think`` level, the penalties, ``top_k``) become
the request's typed fields, which each wire format maps as it can. Knobs only
Ollama understands (``keep_alive``, ``think`` as a bool, ``num_ctx``, ...) stay
out of the request: they reach an Ollama-wire provider untouched in
``request.native`` (the body as Ollama's ``/api/chat`` takes it, which that
wire passes on), and other wire formats never see them, so no upstream is
sent fields it would refuse.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

from chatd import codec
from chatd.errors import BadRequest
from chatd.neutral import LENGTH, STOP, ChatRequest, Event, Reply, ToolCall, Usage
from chatd.validation import check_model_name, read_knobs

ROLES = ("system", "user", "assistant", "tool")
THINK_LEVELS = ("low", "medium", "high", "max")
# Ollama `options` keys that are chatd fields of their own.
OPTION_FIELDS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop"}
# Ollama options that are shared knobs (chatd.neutral.KNOBS), typed for every wire.
PORTABLE_OPTIONS = ("presence_penalty", "frequency_penalty", "top_k")
# /api/generate fields with no /api/chat counterpart (read into messages, refused or ignored).
GENERATE_ONLY = ("prompt", "system", "images", "suffix", "raw", "template", "context")
# The first bytes of an image's base64 tell its type; Ollama's images carry none.
IMAGE_TYPES = (("iVBOR", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"))
IMAGE_TYPES += (("UklGR", "image/webp"),)
# Counters and durations of Ollama's last line; 0 where the provider did not say.
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
NDJSON = "application/x-ndjson"


# -- reading requests ----------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_part(i: int, image) -> dict:
    if not isinstance(image, str) or not image:
        raise BadRequest(f"messages[{i}].images must be a list of base64 strings")
    kind = next((t for prefix, t in IMAGE_TYPES if image.startswith(prefix)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{kind};base64,{image}"}}


def _tool_call(where: str, call, default_id: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest(f"{where} must be objects with function.name")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = {}
    if isinstance(arguments, dict):
        arguments = codec.dumps(arguments).decode()
    elif not isinstance(arguments, str):
        raise BadRequest(f"{where}: function.arguments must be an object")
    # Ollama's clients send calls without ids; OpenAI-style upstreams need one
    # to pair each tool result with its call.
    call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else None
    return {
        "id": call_id or default_id,
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def _messages(messages) -> list:
    """Return Ollama messages in the neutral (OpenAI chat-completions) shape."""
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    out = []
    # Calls of the last assistant turn not yet answered: (id, name), in order.
    pending: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object")
        role = message.get("role")
        role = role.lower() if isinstance(role, str) else role  # as Ollama decodes it
        if role not in ROLES:
            raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
        content = message.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f"{where}.content must be a string")
        turn: dict = {"role": role, "content": content}
        images = message.get("images")
        if images:
            if not isinstance(images, list):
                raise BadRequest(f"{where}.images must be a list of base64 strings")
            parts = [{"type": "text", "text": content}] if content else []
            turn["content"] = parts + [_image_part(i, image) for image in images]
        calls = message.get("tool_calls")
        if calls:
            if role != "assistant" or not isinstance(calls, list):
                raise BadRequest(f"{where}.tool_calls must be a list on an assistant turn")
            turn["tool_calls"] = [
                _tool_call(f"{where}.tool_calls", call, f"call_{i}_{n}")
                for n, call in enumerate(calls)
            ]
            pending = [(c["id"], c["function"]["name"]) for c in turn["tool_calls"]]
        if role == "tool":
            turn["tool_call_id"] = _answered_call(message, pending, i)
        out.append(turn)
    return out


def _answered_call(message: dict, pending: list[tuple[str, str]], i: int) -> str:
    """Pick the call a tool turn answers: by id, else by tool_name, else the next one."""
    given = message.get("tool_call_id")
    if isinstance(given, str) and given:
        pending[:] = [p for p in pending if p[0] != given]
        return given
    name = message.get("tool_name") or message.get("name")
    for n, (call_id, call_name) in enumerate(pending):
        if name is None or call_name == name:
            del pending[n]
            return call_id
    if pending:
        return pending.pop(0)[0]
    return f"call_tool_{i}"


def _options(body: dict) -> tuple[dict, dict]:
    """Split ``options`` into chatd's own fields and the provider-native rest."""
    options = body.get("options")
    if options is None:
        return {}, {}
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    fields: dict = {}
    for name in ("temperature", "top_p"):
        value = options.get(name)
        if value is not None and (not _is_number(value) or value < 0):
            raise BadRequest(f"options.{name} must be a number of at least 0")
        fields[name] = value
    seed = options.get("seed")
    if seed is not None and not _is_int(seed):
        raise BadRequest("options.seed must be an integer")
    fields["seed"] = seed
    stop = options.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("options.stop must be a list of strings")
    fields["stop"] = stop or None
    predict = options.get("num_predict")
    if predict is not None and not _is_int(predict):
        raise BadRequest("options.num_predict must be an integer")
    # Ollama's -1 (unlimited) and -2 (fill the context) mean "no limit" here.
    fields["max_tokens"] = predict if predict is not None and predict > 0 else None
    rest = {k: v for k, v in options.items() if k not in OPTION_FIELDS and k != "num_predict"}
    return fields, rest


def _common(body) -> dict:
    """Check what /api/chat and /api/generate share; return ChatRequest fields."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = check_model_name(body.get("model"), "model")
    stream = body.get("stream")
    if stream is None:
        stream = True  # Ollama streams unless told not to
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false")
    fmt = body.get("format")
    if fmt == "":
        fmt = None
    if fmt is not None and fmt != "json" and not isinstance(fmt, dict):
        raise BadRequest('format must be "json" or a JSON-schema object')
    think = body.get("think")
    if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
        raise BadRequest(f"think must be true, false or one of {', '.join(THINK_LEVELS)}")
    fields, rest = _options(body)
    knobs = read_knobs(rest, PORTABLE_OPTIONS, "options.")
    if isinstance(think, str):
        # OpenAI's name for a thinking level; "max" is not one every upstream takes.
        knobs["reasoning_effort"] = "high" if think == "max" else think
    return {
        "model": model,
        "stream": stream,
        "format": fmt,
        "dialect": "ollama",
        "native": body,
        **fields,
        **knobs,
    }


def parse_chat(body) -> ChatRequest:
    """Read an Ollama ``/api/chat`` body.

    :raises BadRequest: naming the first field that is missing or mistyped.
    """
    fields = _common(body)
    tools = body.get("tools") or None  # ollama-python sends [] when there are none
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        raise BadRequest("tools must be a list of objects")
    return ChatRequest(messages=_messages(body.get("messages")), tools=tools, **fields)


def parse_generate(body) -> ChatRequest:
    """Read an Ollama ``/api/generate`` body: ``system`` and ``prompt`` become two turns.

    :raises BadRequest: for a field chatd cannot honour on a chat API (``suffix``,
        ``raw``, ``template``), rather than answering something else.
    """
    fields = _common(body)
    for name in ("suffix", "template"):
        if body.get(name):
            raise BadRequest(f"{name} is not supported: chatd serves generate through chat APIs")
    if body.get("raw"):
        raise BadRequest("raw is not supported: chatd serves generate through chat APIs")
    prompt, system = body.get("prompt"), body.get("system")
    if prompt is not None and not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    if system is not None and not isinstance(system, str):
        raise BadRequest("system must be a string")
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    if prompt:
        messages.append({"role": "user", "content": prompt})
        if body.get("images"):
            messages[-1]["images"] = body["images"]
    # NOTE: `context` (deprecated token history) is accepted and ignored.
    # What an Ollama-wire provider is sent: the same call as /api/chat takes it,
    # the client's other knobs (options, keep_alive, think, format) kept.
    native = {k: v for k, v in body.items() if k not in GENERATE_ONLY}
    native["messages"] = messages
    fields["native"] = native
    return ChatRequest(messages=_messages(messages), **fields)


def is_load(request: ChatRequest) -> bool:
    """Whether the request only loads or unloads a model (no turns), as Ollama allows."""
    return not request.messages


# -- rendering answers -----------------------------------------------------------


def created_at() -> str:
    """Now, as Ollama writes it (RFC 3339, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def done_reason(finish_reason: str | None) -> str:
    """Ollama says ``stop`` also when the model called tools."""
    return LENGTH if finish_reason == LENGTH else STOP


def _arguments(text: str):
    try:
        value = codec.loads(text or "{}")
    except codec.DecodeError:
        value = None
    # Ollama's clients require an object; a model's broken JSON is kept, not lost.
    return value if isinstance(value, dict) else {"arguments": text}


def render_tool_calls(calls: list[ToolCall]) -> list[dict]:
    return [
        {"id": c.id, "function": {"index": i, "name": c.name, "arguments": _arguments(c.arguments)}}
        for i, c in enumerate(calls)
    ]


def _metrics(usage: Usage | None, raw: dict | None, started: float) -> dict:
    """Counts and durations: the Ollama upstream's own when it sent them, else chatd's."""
    raw = raw if isinstance(raw, dict) else {}
    metrics = {name: raw.get(name) if _is_int(raw.get(name)) else 0 for name in METRICS}
    if not metrics["total_duration"]:
        metrics["total_duration"] = int((time.monotonic() - started) * 1e9)
    if usage is not None:
        metrics["prompt_eval_count"] = usage.prompt_tokens
        metrics["eval_count"] = usage.completion_tokens
    return metrics


def _line(model: str, generate: bool, content: str, thinking: str, tool_calls=None) -> dict:
    if generate:
        line = {"model": model, "created_at": created_at(), "response": content}
        if thinking:
            line["thinking"] = thinking
        return line
    message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"model": model, "created_at": created_at(), "message": message}


def render_reply(reply: Reply, model: str, *, generate: bool, started: float) -> dict:
    """A whole answer: Ollama's last line with the whole text in it."""
    calls = render_tool_calls(reply.tool_calls) if reply.tool_calls and not generate else None
    body = _line(model, generate, reply.content, reply.thinking, calls)
    body["done"] = True
    body["done_reason"] = done_reason(reply.finish_reason)
    body.update(_metrics(reply.usage, reply.raw, started))
    _keep_logprobs(reply.raw, body)
    return body


def _keep_logprobs(raw, line: dict) -> None:
    """Logprobs an Ollama upstream computed (the client asked for them) reach the client."""
    if isinstance(raw, dict) and raw.get("logprobs") is not None:
        line["logprobs"] = raw["logprobs"]


def render_load(model: str, *, generate: bool, unload: bool) -> dict:
    """What Ollama answers a request with no turns: the model is (un)loaded."""
    body = _line(model, generate, "", "")
    body["done"] = True
    body["done_reason"] = "unload" if unload else "load"
    return body


def ndjson(obj: dict) -> bytes:
    return codec.dumps(obj) + b"\n"


def render_stream(
    events: Iterator[Event], model: str, *, generate: bool, started: float
) -> Iterator[bytes]:
    """NDJSON lines: one per piece of text, the tool calls whole, then the ``done`` line.

    Streamed tool-call pieces are put together first: Ollama's clients take
    each call whole, with its arguments as an object.
    """
    calls: dict[int, ToolCall] = {}
    finish = None
    usage = None
    raw = None
    for event in events:
        if event.content or event.thinking:
            line = _line(model, generate, event.content, event.thinking)
            line["done"] = False
            _keep_logprobs(event.raw, line)
            yield ndjson(line)
        for piece in event.tool_calls or ():
            call = calls.setdefault(piece.index, ToolCall(piece.id or "", piece.name or "", ""))
            call.id = call.id or piece.id or ""
            call.name = call.name or piece.name or ""
            call.arguments += piece.arguments
        finish = event.finish_reason or finish
        usage = event.usage or usage
        if isinstance(event.raw, dict) and event.raw.get("done"):
            raw = event.raw
    if calls and not generate:
        ordered = [calls[i] for i in sorted(calls)]
        for i, call in enumerate(ordered):
            call.id = call.id or f"call_{i}"
        line = _line(model, generate, "", "", render_tool_calls(ordered))
        line["done"] = False
        yield ndjson(line)
    last = _line(model, generate, "", "")
    last["done"] = True
    last["done_reason"] = done_reason(finish)
    last.update(_metrics(usage, raw, started))
    yield ndjson(last)


def error_body(status: int, message: str, request_id: str = "", **details) -> dict:
    """Ollama's error envelope: its clients read only ``{"error": "<text>"}``."""
    return {"error": message}


def render_stream_error(body: dict) -> bytes:
    """A cut stream's last line, as Ollama ends one: ``{"error": text}``."""
    return ndjson({"error": body["error"]["message"]})
