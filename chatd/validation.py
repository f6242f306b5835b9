"""chatd.validation ~~~ A request body in, a checked :class:`ChatRequest` out.

The /chat and /v1 readers, and the checks every dialect shares (the body's
depth, model names); each rejection is a
:class:`~chatd.errors.BadRequest` whose message names the field. Unknown fields
are refused rather than dropped, so a typo (``max_token``) or a
provider-native knob in the wrong place (``top_k``, which belongs in
``options``) is said at once instead of silently ignored.
"""

from __future__ import annotations

import difflib
import re

from chatd import codec
from chatd.errors import BadRequest
from chatd.memory import check_parse_cost
from chatd.neutral import KNOBS, REASONING_EFFORTS, ChatRequest

ROLES = ("system", "user", "assistant", "tool")
MAX_FALLBACKS = 8
# Model names are printable ASCII of at most this many characters: they reach
# the log, a metric label and the X-Chatd-Fallbacks header.
MAX_MODEL_NAME = 512
MODEL_NAME = re.compile(rf"[\x20-\x7e]{{1,{MAX_MODEL_NAME}}}")
# Containers nested deeper than this are refused: orjson will not encode past
# 254 levels, and no chat request needs more than a few dozen.
MAX_DEPTH = 64
# The same bound for a whole body, whatever the dialect: its own fields sit a
# few levels down (tools[0].input_schema...), so the body gets some more room.
MAX_BODY_DEPTH = MAX_DEPTH + 16
# Fields chatd itself decides: `options` (and /v1 fields chatd has no name
# for, which travel in options) may not set them behind chatd's back, or the
# upstream would be sent one model while the answer, log and metrics said another.
OWNED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "format",
        "response_format",
        "fallbacks",
        "options",
        "request_id",
        "max_tokens",
        "max_completion_tokens",
    }
)
# OpenAI's newer name for a system turn; accepted on /v1 (sent to Ollama as system).
OPENAI_ROLES = (*ROLES, "developer")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_depth(value, where: str, depth: int = 0) -> None:
    """Refuse containers nested past MAX_DEPTH anywhere inside ``value``."""
    if depth > MAX_DEPTH:
        raise BadRequest(f"{where} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for item in value.values():
            if isinstance(item, dict | list):
                _check_depth(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list):
                _check_depth(item, where, depth + 1)


def _check_part(where: str, part) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise BadRequest(f"{where} must be an object with a string 'type'")
    kind = part["type"]
    if kind == "text" and not isinstance(part.get("text"), str):
        raise BadRequest(f"{where}.text must be a string")
    if kind == "image_url":
        image = part.get("image_url")
        if not isinstance(image, dict) or not isinstance(image.get("url"), str):
            raise BadRequest(f"{where}.image_url must be an object with a string 'url'")


def _check_tool_calls(where: str, calls) -> None:
    if not isinstance(calls, list):
        raise BadRequest(f"{where} must be a list of tool calls")
    for k, call in enumerate(calls):
        here = f"{where}[{k}]"
        if not isinstance(call, dict):
            raise BadRequest(f"{here} must be an object")
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"{here}.function must be an object with a string 'name'")
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str | dict):
            raise BadRequest(f"{here}.function.arguments must be a string or an object")
        if call.get("id") is not None and not isinstance(call["id"], str):
            raise BadRequest(f"{here}.id must be a string")


def _check_message(i: int, message, roles: tuple[str, ...]) -> None:
    """Check one turn strictly, so wire formats can trust its shape."""
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object")
    role = message.get("role")
    if not isinstance(role, str):
        raise BadRequest(f"{where}.role is required and must be a string")
    if role not in roles:
        raise BadRequest(f"{where}.role must be one of {', '.join(roles)}, got {role!r}")
    _check_depth(message, where)
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        _check_tool_calls(f"{where}.tool_calls", tool_calls)
    images = message.get("images")
    if images is not None and not (
        isinstance(images, list) and all(isinstance(image, str) for image in images)
    ):
        raise BadRequest(f"{where}.images must be a list of base64 strings")
    for name in ("tool_call_id", "name", "thinking"):
        if message.get(name) is not None and not isinstance(message[name], str):
            raise BadRequest(f"{where}.{name} must be a string")
    content = message.get("content")
    if isinstance(content, str):
        return
    if isinstance(content, list):
        for j, part in enumerate(content):
            _check_part(f"{where}.content[{j}]", part)
        return
    # An assistant turn that only calls tools may carry no content (OpenAI allows null).
    if content is None and role == "assistant" and tool_calls:
        return
    raise BadRequest(f"{where}.content must be a string or a list of content parts")


def check_model_name(name, where: str) -> str:
    """Return ``name`` if it is a usable model name (every dialect asks this).

    :raises BadRequest: missing, empty, not printable ASCII, or too long.
    """
    if not isinstance(name, str) or not name.strip():
        raise BadRequest(f"{where} is required and must be a non-empty string")
    if not MODEL_NAME.fullmatch(name):
        raise BadRequest(f"{where} must be printable ASCII of at most {MAX_MODEL_NAME} characters")
    return name


def _check_messages(messages, roles: tuple[str, ...]) -> list:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages is required and must be a non-empty list")
    for i, message in enumerate(messages):
        _check_message(i, message, roles)
    return messages


def _optional_number(body: dict, name: str, low: float = 0.0) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_number(value) or value < low:
        raise BadRequest(f"{name} must be a number of at least {low:g}")
    return value


def _check_stop(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    raise BadRequest("stop must be a string or a list of strings")


def read_knobs(source: dict, names=KNOBS, where: str = "") -> dict:
    """Check the shared knobs ``names`` found in ``source``; return them as
    ChatRequest fields (``where`` prefixes the field named in an error).

    :raises BadRequest: a knob of the wrong type or out of range.
    """
    knobs = {}
    for name in names:
        value = source.get(name)
        if value is None:
            continue
        if name == "reasoning_effort":
            if value not in REASONING_EFFORTS:
                raise BadRequest(f"{where}{name} must be one of {', '.join(REASONING_EFFORTS)}")
        elif name == "top_k":
            if not _is_int(value) or value < 0:
                raise BadRequest(f"{where}{name} must be a non-negative integer")
        elif name == "parallel_tool_calls":
            if not isinstance(value, bool):
                raise BadRequest(f"{where}{name} must be true or false")
        elif not _is_number(value):  # the penalties: the upstream knows its range
            raise BadRequest(f"{where}{name} must be a number")
        knobs[name] = value
    return knobs


def _check_format(value):
    if value is None or value == "json":
        return value
    if isinstance(value, dict):
        _check_depth(value, "format")
        return value
    raise BadRequest('format must be "json" or a JSON-schema object')


def build_chat_request(
    body, roles: tuple[str, ...] = ROLES, owned_options: frozenset[str] = OWNED_FIELDS
) -> ChatRequest:
    """Check a decoded body against chatd's request shape.

    :raises BadRequest: naming the first field that is missing, mistyped or unknown.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    unknown = body.keys() - _ALLOWED
    if unknown:
        name = sorted(unknown)[0]
        hint = _suggest(name, _ALLOWED) or "provider-native parameters go in 'options'"
        raise BadRequest(f"unknown field {name!r}; {hint}")
    model = check_model_name(body.get("model"), "model")

    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise BadRequest("max_tokens must be a positive integer")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise BadRequest("seed must be an integer")
    options = body.get("options")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        raise BadRequest("options must be an object")
    else:
        owned = sorted(options.keys() & owned_options)
        if owned:
            raise BadRequest(
                f"options may not set {owned[0]!r}: chatd decides it "
                "(use the top-level field, where there is one)"
            )
        _check_depth(options, "options")
    tools = body.get("tools")
    if tools is not None:
        if not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise BadRequest("tools must be a list of objects")
        _check_depth(tools, "tools")
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        if not isinstance(tool_choice, str | dict):
            raise BadRequest("tool_choice must be a string or an object")
        _check_depth(tool_choice, "tool_choice")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false")
    fallbacks = body.get("fallbacks")
    if fallbacks is not None:
        if not isinstance(fallbacks, list) or len(fallbacks) > MAX_FALLBACKS:
            raise BadRequest(f"fallbacks must be a list of at most {MAX_FALLBACKS} model names")
        for k, name in enumerate(fallbacks):
            check_model_name(name, f"fallbacks[{k}]")

    return ChatRequest(
        model=model,
        messages=_check_messages(body.get("messages"), roles),
        temperature=_optional_number(body, "temperature"),
        top_p=_optional_number(body, "top_p"),
        max_tokens=max_tokens,
        stop=_check_stop(body.get("stop")),
        seed=seed,
        format=_check_format(body.get("format")),
        options=options,
        tools=tools,
        tool_choice=tool_choice,
        stream=stream,
        fallbacks=fallbacks,
    )


# The fields a client may send: the neutral request's own, less what chatd sets
# and the shared knobs (a /chat caller puts its provider's own in `options`).
_ALLOWED = frozenset(ChatRequest.__slots__) - {
    "request_id",
    "dialect",
    "native",
    "native_headers",
    *KNOBS,
}


# OpenAI (and OpenRouter) request fields that /v1 passes on in `options`.
OPENAI_FIELDS = frozenset(
    {
        "response_format",
        "max_completion_tokens",
        "stream_options",
        "n",
        "user",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "parallel_tool_calls",
        "store",
        "metadata",
        "service_tier",
        "reasoning_effort",
        "prompt_cache_key",
        "presence_penalty",
        "frequency_penalty",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "verbosity",
        "safety_identifier",
        "top_k",
        "min_p",
        "top_a",
        "repetition_penalty",
        "reasoning",
    }
)


def _suggest(name: str, known: frozenset[str]) -> str | None:
    """Return "did you mean 'temperature'?" for a near miss of a known field, else None."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
    return f"did you mean {close[0]!r}?" if close else None


def _format_from(response_format) -> str | dict | None:
    """Map OpenAI's ``response_format`` to chatd's ``format``."""
    if not isinstance(response_format, dict):
        raise BadRequest("response_format must be an object")
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be an object")
        return schema
    if kind == "text":
        return None
    raise BadRequest("response_format.type must be text, json_object or json_schema")


def build_openai_request(body) -> tuple[ChatRequest, bool]:
    """Check an OpenAI chat-completions body; return it as a ChatRequest and
    whether the client asked for usage in its stream.

    The knobs other wire formats have names for (``reasoning_effort``,
    penalties, ``top_k``, ``parallel_tool_calls``) become typed fields. OpenAI
    fields chatd has no name for travel in ``options``: OpenAI-style upstreams
    get them back at the top level unchanged, Ollama gets the ones it
    understands, Anthropic and Responses upstreams none (they refuse fields
    they do not know).
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    fields = {key: value for key, value in body.items() if key in _ALLOWED and key != "options"}
    native = {key: value for key, value in body.items() if key not in _ALLOWED}
    if "max_completion_tokens" in native:
        if "max_tokens" in fields:
            raise BadRequest("set max_tokens or max_completion_tokens, not both")
        fields["max_tokens"] = native.pop("max_completion_tokens")
    if native.get("response_format") is not None:
        fields["format"] = _format_from(native["response_format"])
    for name in sorted(native.keys() - OPENAI_FIELDS):
        # Passed on as a provider-native parameter, unless it is a typo of a known field.
        hint = _suggest(name, _ALLOWED | OPENAI_FIELDS)
        if hint:
            raise BadRequest(f"unknown field {name!r}; {hint}")
    stream_options = native.pop("stream_options", None) or {}
    if not isinstance(stream_options, dict):
        raise BadRequest("stream_options must be an object")
    knobs = read_knobs(native)
    for name in KNOBS:
        native.pop(name, None)
    if native:
        fields["options"] = native
    # response_format stays in options, checked above, so OpenAI upstreams get
    # it whole (name, strict); every other field chatd owns is refused there.
    owned = OWNED_FIELDS - {"response_format"}
    request = build_chat_request(fields, OPENAI_ROLES, owned)
    request.dialect = "openai"
    for name, value in knobs.items():
        setattr(request, name, value)
    return request, bool(stream_options.get("include_usage"))


def parse_json(data: bytes):
    """Decode a request body, turning any decoding failure into a clear 400."""
    if not data:
        raise BadRequest("request body is empty; expected a JSON object")
    check_parse_cost(data)
    try:
        body = codec.loads(data)
    except codec.DecodeError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    # Only a body of more bytes than "[" and "]" twice the bound can be that deep.
    if len(data) > 2 * MAX_BODY_DEPTH:
        check_body_depth(body)
    return body


def check_body_depth(body) -> None:
    """Refuse a body nested deeper than MAX_BODY_DEPTH anywhere, in every dialect
    (what chatd sends upstream is encoded again, and orjson stops at 254 levels).

    Iterative, so no input can reach Python's recursion limit either.
    """
    level = [body]
    for _ in range(MAX_BODY_DEPTH + 1):
        deeper = []
        for value in level:
            if isinstance(value, dict):
                deeper.extend(v for v in value.values() if isinstance(v, dict | list))
            elif isinstance(value, list):
                deeper.extend(v for v in value if isinstance(v, dict | list))
        if not deeper:
            return
        level = deeper
    raise BadRequest(f"request body is nested deeper than {MAX_BODY_DEPTH} levels")
