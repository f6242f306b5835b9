"""chatd.adapters.responses ~~~ OpenAI Responses upstream (OpenAI, OpenCode's /responses).

``POST {url}/responses``. The neutral request (OpenAI chat shape) becomes
``input`` items: system and developer turns are joined into ``instructions``,
user and assistant turns become messages, assistant tool calls
``function_call`` items and tool turns ``function_call_output`` items. chatd
keeps no conversation state upstream (``store: false``). Answers are read
from ``output`` items, streams from the ``response.*`` events, which end with
``response.completed`` (or ``incomplete``/``failed``), not ``[DONE]``.
Facts: shared/research/anthropic-responses.md sections 2 and 3.2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from chatd.adapters.base import ChatAdapter, count
from chatd.adapters.framing import iter_sse_events
from chatd.adapters.parts import (
    arguments_text,
    call_id_name,
    forced_function,
    function_tool,
    image_url_of,
    text_field,
    text_of,
)
from chatd.errors import BadRequest, UpstreamError, trim
from chatd.neutral import (
    CONTENT_FILTER,
    LENGTH,
    STOP,
    TOOL_CALLS,
    ChatRequest,
    Event,
    Reply,
    ToolCall,
    ToolCallDelta,
    Usage,
)

# The events after which a Responses stream has nothing more to say.
END_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
INCOMPLETE = {"max_output_tokens": LENGTH, "content_filter": CONTENT_FILTER}
TOOL_CHOICES = ("auto", "none", "required")
THINKING_DELTAS = frozenset(
    {"response.reasoning_summary_text.delta", "response.reasoning_text.delta"}
)


def iter_responses_events(lines: Iterable[bytes]) -> Iterator[dict]:
    """SSE events up to and including the response's last; a stream without it is cut."""
    return iter_sse_events(lines, done=lambda event: event.get("type") in END_EVENTS)


def _usage(response: dict) -> Usage:
    counts = response.get("usage") or {}
    return Usage(count(counts.get("input_tokens")), count(counts.get("output_tokens")))


def _finish(response: dict, has_calls: bool) -> str | None:
    status = response.get("status")
    if status == "incomplete":
        return INCOMPLETE.get((response.get("incomplete_details") or {}).get("reason"), LENGTH)
    if status == "completed":
        # Responses has no tool-call status: the function_call items say it.
        return TOOL_CALLS if has_calls else STOP
    return None


def _failure(provider: str, response: dict) -> UpstreamError:
    """The error of a failed response: its ``error.message``, else its status."""
    error = response.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return _failed(provider, message or f"status {response.get('status')}")


def _failed(provider: str, message) -> UpstreamError:
    text = message if isinstance(message, str) else repr(message)
    return UpstreamError(f"{provider} failed: {trim(text)}", provider=provider)


# -- request -------------------------------------------------------------------


def _input_parts(content, where: str):
    """Return a user turn's content: the string, or its parts as input_text/input_image."""
    if isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(content):
        kind, at = part["type"], f"{where}.content[{j}]"
        if kind == "text":
            parts.append({"type": "input_text", "text": text_field(part, at)})
        elif kind == "image_url":
            url, detail = image_url_of(part, at)
            parts.append({"type": "input_image", "image_url": url, "detail": detail or "auto"})
        else:
            raise BadRequest(f"{at}.type {kind!r} cannot be sent to a Responses upstream")
    return parts


def translate_messages(messages: list) -> tuple[str, list[dict]]:
    """Return (instructions, input items) for OpenAI-shaped messages."""
    instructions: list[str] = []
    items: list[dict] = []
    for i, message in enumerate(messages):
        role, where = message["role"], f"messages[{i}]"
        content = message.get("content")
        if role in ("system", "developer"):
            text = text_of(content, where)
            if text:
                instructions.append(text)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise BadRequest(f"{where}.tool_call_id is required for a tool turn")
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": call_id,
                    "output": text_of(content, where),
                }
            )
        elif role == "assistant":
            text = text_of(content, where)
            if text:
                items.append({"role": "assistant", "content": text})
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise BadRequest(f"{where}.tool_calls must be a list")
            for k, call in enumerate(calls):
                at = f"{where}.tool_calls[{k}]"
                arguments = arguments_text(call, at)
                call_id, name = call_id_name(call, at)
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call_id,
                        "name": name,
                        "arguments": arguments,
                    }
                )
        else:
            items.append({"role": "user", "content": _input_parts(content, where)})
    return "\n\n".join(instructions), items


def translate_tools(tools: list) -> list[dict]:
    out = []
    for i, tool in enumerate(tools):
        function = function_tool(tool, f"tools[{i}]")
        entry = {
            "type": "function",
            "name": function["name"],
            "parameters": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            entry["description"] = function["description"]
        if "strict" in function:
            entry["strict"] = function["strict"]
        out.append(entry)
    return out


def translate_tool_choice(choice: str | dict) -> str | dict:
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise BadRequest("tool_choice must be auto, none, required or a function")
        return choice
    return {"type": "function", "name": forced_function(choice)}


def text_format(format_: str | dict) -> dict:
    """Map chatd's ``format`` to the Responses ``text.format``."""
    if format_ == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "name": "response", "schema": format_}


# -- the wire format -------------------------------------------------------------


class ResponsesChatAdapter(ChatAdapter):
    wire = "responses"
    # What the translation fills; `store: false` too (chatd keeps no state upstream).
    owned_fields = frozenset(
        {
            "model",
            "input",
            "instructions",
            "stream",
            "store",
            "max_output_tokens",
            "tools",
            "tool_choice",
        }
    )
    chat_path = "/responses"
    models_path = "/models"
    iter_events = staticmethod(iter_responses_events)
    extra_headers: dict = {}

    def build_body(self, request: ChatRequest, upstream_model: str) -> dict:
        if request.stop:
            # Responses has no stop sequences; ignoring them would answer past them.
            raise BadRequest("stop is not supported by a Responses upstream")
        instructions, items = translate_messages(request.messages)
        body = {"model": upstream_model, "input": items, "stream": request.stream, "store": False}
        if instructions:
            body["instructions"] = instructions
        if request.max_tokens is not None:
            body["max_output_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.format is not None:
            body["text"] = {"format": text_format(request.format)}
        if request.tools:
            body["tools"] = translate_tools(request.tools)
        if request.tool_choice is not None:
            body["tool_choice"] = translate_tool_choice(request.tool_choice)
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.reasoning_effort is not None:
            body["reasoning"] = {"effort": request.reasoning_effort}
        # NOTE: top_k and the penalties have no Responses field: dropped.
        # A /chat caller's Responses-native extras (reasoning, include, ...) go last.
        self.merge_options(body, self.options_for(request))
        return body

    def parse_reply(self, data: dict) -> Reply:
        if data.get("status") == "failed":
            raise _failure(self.provider, data)
        texts, thoughts, calls = [], [], []
        for item in data["output"]:
            kind = item["type"]
            if kind == "message":
                for part in item["content"]:
                    if part["type"] == "output_text":
                        texts.append(part["text"])
                    elif part["type"] == "refusal":
                        texts.append(part["refusal"])
            elif kind == "function_call":
                calls.append(ToolCall(item["call_id"], item["name"], item.get("arguments") or "{}"))
            elif kind == "reasoning":
                thoughts += [s["text"] for s in item.get("summary") or ()]
        return Reply(
            content="".join(texts),
            thinking="\n\n".join(thoughts),
            tool_calls=calls,
            finish_reason=_finish(data, bool(calls)),
            usage=_usage(data),
            raw=data,
        )

    def stream_reader(self) -> Callable[[dict], Event | None]:
        return ResponsesStream(self.provider)

    def parse_models(self, data: dict) -> list[str]:
        return [model["id"] for model in data["data"]]


class ResponsesStream:
    """Translates one Responses stream's events into neutral events, in order.

    Returns None for events that add nothing (created, in_progress, the
    ``.done`` and ``content_part`` events). Tool calls are numbered 0, 1, ...
    in the order their items are added, whatever their ``output_index``.
    """

    def __init__(self, provider: str):
        self.provider = provider
        # output_index -> the tool call's own index.
        self.tool_index: dict[int, int] = {}

    def __call__(self, event: dict) -> Event | None:
        kind = event.get("type")
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            return Event(content=event["delta"], raw=event) if event["delta"] else None
        if kind in THINKING_DELTAS:
            return Event(thinking=event["delta"], raw=event) if event["delta"] else None
        if kind == "response.function_call_arguments.delta":
            if not event["delta"]:
                return None
            call = ToolCallDelta(self.tool_index[event["output_index"]], arguments=event["delta"])
            return Event(tool_calls=[call], raw=event)
        if kind == "response.output_item.added":
            return self._item_added(event)
        if kind in ("response.completed", "response.incomplete"):
            response = event["response"]
            return Event(
                finish_reason=_finish(response, bool(self.tool_index)),
                usage=_usage(response),
                raw=event,
            )
        if kind == "response.failed":
            raise _failure(self.provider, event.get("response") or {})
        if kind == "error":
            # {"type": "error", "code", "message"}: no "error" key, so the base let it by.
            raise _failed(self.provider, event.get("message") or event.get("code"))
        return None

    def _item_added(self, event: dict) -> Event | None:
        item = event["item"]
        if item["type"] != "function_call":
            return None
        index = len(self.tool_index)
        self.tool_index[event["output_index"]] = index
        delta = ToolCallDelta(index, item["call_id"], item["name"], item.get("arguments") or "")
        return Event(tool_calls=[delta], raw=event)
