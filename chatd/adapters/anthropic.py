"""chatd.adapters.anthropic ~~~ Anthropic Messages upstream (Anthropic, OpenCode's /messages).

``POST {url}/messages`` with the ``anthropic-version`` header. The neutral
request (OpenAI chat shape) is translated: system turns are lifted into
``system``, tool calls become ``tool_use`` blocks and tool turns ``tool_result``
blocks in a user turn, consecutive turns of one role are merged (Anthropic
wants them alternating), images become ``image`` blocks, and ``max_tokens`` is
always sent because Anthropic requires it. Answers and streams are read back
into :mod:`chatd.neutral`. The stream is SSE without ``[DONE]``: it ends with
``message_stop``. Facts: shared/research/anthropic-responses.md sections 1 and 3.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from chatd import codec
from chatd.adapters.base import ChatAdapter, count
from chatd.adapters.framing import iter_sse_events
from chatd.adapters.parts import (
    arguments_object,
    call_id_name,
    forced_function,
    function_tool,
    image_url_of,
    split_data_url,
    text_field,
    text_of,
)
from chatd.errors import BadRequest, UpstreamError
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

API_VERSION = "2023-06-01"
# Anthropic requires max_tokens and has no default. 8192 is the output limit of
# the smallest current models (Claude 3.5 Haiku/Sonnet; every Claude 4 allows
# more), so it is never refused for being too large, and it is long enough for
# an ordinary answer; a client wanting more sends max_tokens.
DEFAULT_MAX_TOKENS = 8192
# Anthropic's temperature runs 0-1; OpenAI's 0-2. Higher values are clamped.
MAX_TEMPERATURE = 1.0
# Fields of an Anthropic client's own body that chatd owns, not the upstream.
FINISH = {
    "end_turn": STOP,
    "stop_sequence": STOP,
    # Paused by a server tool: the turn is over as far as the client can tell.
    "pause_turn": STOP,
    "max_tokens": LENGTH,
    "model_context_window_exceeded": LENGTH,
    "tool_use": TOOL_CALLS,
    "refusal": CONTENT_FILTER,
}
TOOL_CHOICE = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}


def iter_anthropic_events(lines: Iterable[bytes]) -> Iterator[dict]:
    """SSE events up to and including ``message_stop``; a stream without it is cut."""
    return iter_sse_events(lines, done=lambda event: event.get("type") == "message_stop")


def prompt_tokens(counts: dict) -> int:
    """Input tokens as OpenAI counts them: Anthropic's excludes the cached ones."""
    return (
        count(counts.get("input_tokens"))
        + count(counts.get("cache_creation_input_tokens"))
        + count(counts.get("cache_read_input_tokens"))
    )


# -- request -------------------------------------------------------------------


def _image_block(part: dict, where: str) -> dict:
    url, _detail = image_url_of(part, where)  # Anthropic has no detail setting
    if url.startswith("data:"):
        media_type, data = split_data_url(url, where)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise BadRequest(f"{where}.image_url.url must be a base64 data: URL or an http(s) URL")


def _content_blocks(content, where: str) -> list[dict]:
    """Return a turn's content as blocks (empty text dropped: Anthropic refuses it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(content):
        kind, at = part["type"], f"{where}.content[{j}]"
        if kind == "text":
            text = text_field(part, at)
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part, at))
        else:
            raise BadRequest(f"{at}.type {kind!r} cannot be sent to an Anthropic upstream")
    return blocks


def _tool_use_blocks(calls, where: str) -> list[dict]:
    if not isinstance(calls, list):
        raise BadRequest(f"{where}.tool_calls must be a list")
    blocks = []
    for k, call in enumerate(calls):
        at = f"{where}.tool_calls[{k}]"
        input_ = arguments_object(call, at)
        call_id, name = call_id_name(call, at)
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": input_})
    return blocks


def _tool_result_block(message: dict, where: str) -> dict:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{where}.tool_call_id is required for a tool turn")
    return {
        "type": "tool_result",
        "tool_use_id": call_id,
        "content": text_of(message.get("content"), where),
    }


def translate_messages(messages: list) -> tuple[str, list[dict]]:
    """Return (system text, Anthropic turns) for OpenAI-shaped messages."""
    system: list[str] = []
    turns: list[dict] = []
    for i, message in enumerate(messages):
        role, where = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            text = text_of(message.get("content"), where)
            if text:
                system.append(text)
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result_block(message, where)]
        elif role == "assistant":
            blocks = _content_blocks(message.get("content"), where)
            if message.get("tool_calls"):
                blocks += _tool_use_blocks(message["tool_calls"], where)
        else:
            role, blocks = "user", _content_blocks(message.get("content"), where)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            # Anthropic wants user and assistant alternating: same-role runs become one turn.
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(system), turns


def translate_tools(tools: list) -> list[dict]:
    out = []
    for i, tool in enumerate(tools):
        function = function_tool(tool, f"tools[{i}]")
        entry = {
            "name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            entry["description"] = function["description"]
        out.append(entry)
    return out


def translate_tool_choice(choice: str | dict) -> dict:
    if isinstance(choice, str):
        if choice not in TOOL_CHOICE:
            raise BadRequest("tool_choice must be auto, none, required or a function")
        return dict(TOOL_CHOICE[choice])  # a copy: the body is the caller's to change
    return {"type": "tool", "name": forced_function(choice)}


# -- the wire format -------------------------------------------------------------


class AnthropicChatAdapter(ChatAdapter):
    wire = "anthropic"
    # What the translation fills: options may not replace the prompt or the limits.
    owned_fields = frozenset(
        {
            "model",
            "messages",
            "system",
            "stream",
            "max_tokens",
            "stop_sequences",
            "tools",
            "tool_choice",
        }
    )
    chat_path = "/messages"
    models_path = "/models"
    iter_events = staticmethod(iter_anthropic_events)
    extra_headers = {"anthropic-version": API_VERSION}
    #: A provider row may set its own (an instance attribute shadows this).
    default_max_tokens = DEFAULT_MAX_TOKENS

    def build_body(self, request: ChatRequest, upstream_model: str) -> dict:
        if request.dialect == "anthropic" and request.native is not None:
            return self._native_body(request, upstream_model)
        if request.format is not None:
            raise BadRequest("format (JSON mode) is not supported by an Anthropic upstream")
        system, turns = translate_messages(request.messages)
        body = {"model": upstream_model, "messages": turns, "stream": request.stream}
        if system:
            body["system"] = system
        extras = self.options_for(request)
        body["max_tokens"] = request.max_tokens or self._default_max_tokens(extras)
        if request.temperature is not None:
            body["temperature"] = min(request.temperature, MAX_TEMPERATURE)
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.top_k is not None:
            body["top_k"] = request.top_k
        if request.stop:
            body["stop_sequences"] = request.stop
        if request.tools:
            body["tools"] = translate_tools(request.tools)
        if request.tool_choice is not None:
            body["tool_choice"] = translate_tool_choice(request.tool_choice)
        if request.parallel_tool_calls is False and request.tools:
            # Anthropic says it on the tool choice (auto when the client named
            # none); a choice of "none" takes no such flag.
            choice = body.setdefault("tool_choice", {"type": "auto"})
            if choice["type"] != "none":
                choice["disable_parallel_tool_use"] = True
        # NOTE: reasoning_effort and the penalties have no Anthropic field: dropped.
        # A /chat caller's Anthropic-native extras (thinking, metadata, ...) go last.
        self.merge_options(body, extras)
        return body

    def _default_max_tokens(self, options: dict) -> int:
        # Thinking tokens count toward max_tokens, and a budget at or above it is
        # refused: leave the answer its default room on top of the budget.
        thinking = options.get("thinking")
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
            return budget + self.default_max_tokens
        return self.default_max_tokens

    def call_headers(self, request: ChatRequest) -> dict | None:
        # The client's own beta flags go with its own body: without them Anthropic
        # refuses the beta fields in it (context_management, as Claude Code sends).
        if request.dialect == "anthropic" and request.native is not None:
            return request.native_headers
        return None

    def _native_body(self, request: ChatRequest, upstream_model: str) -> dict:
        """An Anthropic client's own body, passed on: only what chatd owns changes."""
        body = dict(request.native)
        body["model"] = upstream_model
        body["stream"] = request.stream
        body.setdefault("max_tokens", self._default_max_tokens(body))
        return body

    # -- answers -------------------------------------------------------------------

    def parse_reply(self, data: dict) -> Reply:
        texts, thoughts, calls = [], [], []
        for block in data["content"]:
            kind = block["type"]
            if kind == "text":
                texts.append(block["text"])
            elif kind == "thinking":
                thoughts.append(block["thinking"])
            elif kind == "tool_use":
                arguments = codec.dumps(block.get("input") or {}).decode()
                calls.append(ToolCall(block["id"], block["name"], arguments))
            # redacted_thinking, server tools' blocks: nothing a chat client can show.
        counts = data.get("usage") or {}
        return Reply(
            content="".join(texts),
            thinking="".join(thoughts),
            tool_calls=calls,
            finish_reason=FINISH.get(data.get("stop_reason")),
            usage=Usage(prompt_tokens(counts), count(counts.get("output_tokens"))),
            raw=data,
        )

    def stream_reader(self) -> Callable[[dict], Event | None]:
        return AnthropicStream(self.provider)

    def parse_models(self, data: dict) -> list[str]:
        return [model["id"] for model in data["data"]]


class AnthropicStream:
    """Translates one Anthropic stream's events into neutral events, in order.

    Events that add nothing neutral (ping, block and message stops, signatures)
    still come out, empty but for ``raw``: an Anthropic client is answered with
    the upstream's own events, signatures included (chatd.dialects.anthropic).
    Tool calls are numbered 0, 1, ... in the order they start, as
    OpenAI numbers them, not by Anthropic's block index (text and thinking
    blocks take indexes too).
    """

    def __init__(self, provider: str):
        self.provider = provider
        self.prompt_tokens = 0
        # Anthropic block index -> the tool call's own index.
        self.tool_index: dict[int, int] = {}

    def __call__(self, event: dict) -> Event:
        read = self._read(event)
        return read if read is not None else Event(raw=event)

    def _read(self, event: dict) -> Event | None:
        kind = event.get("type")
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "message_start":
            self.prompt_tokens = prompt_tokens(event["message"].get("usage") or {})
            return None
        if kind == "message_delta":
            counts = event.get("usage") or {}
            if "input_tokens" in counts:  # cumulative when present: it supersedes message_start
                self.prompt_tokens = prompt_tokens(counts)
            return Event(
                finish_reason=FINISH.get((event.get("delta") or {}).get("stop_reason")),
                usage=Usage(self.prompt_tokens, count(counts.get("output_tokens"))),
                raw=event,
            )
        if kind == "error":
            # The base already raises for an error with a message; this is one without.
            raise UpstreamError(
                f"{self.provider} failed mid-stream: {event.get('error')!r:.200}",
                provider=self.provider,
            )
        return None

    def _block_start(self, event: dict) -> Event | None:
        block = event["content_block"]
        kind = block["type"]
        if kind == "tool_use":
            index = len(self.tool_index)
            self.tool_index[event["index"]] = index
            # Anthropic starts input at {} and streams it; a proxy may send it whole here.
            arguments = codec.dumps(block["input"]).decode() if block.get("input") else ""
            delta = ToolCallDelta(index, block["id"], block["name"], arguments)
            return Event(tool_calls=[delta], raw=event)
        if kind == "text" and block.get("text"):
            return Event(content=block["text"], raw=event)
        if kind == "thinking" and block.get("thinking"):
            return Event(thinking=block["thinking"], raw=event)
        return None

    def _delta(self, event: dict) -> Event | None:
        delta = event["delta"]
        kind = delta["type"]
        if kind == "text_delta":
            return Event(content=delta["text"], raw=event) if delta["text"] else None
        if kind == "thinking_delta":
            return Event(thinking=delta["thinking"], raw=event) if delta["thinking"] else None
        if kind == "input_json_delta":
            piece = delta["partial_json"]
            if not piece:
                return None
            index = self.tool_index.get(event["index"])
            if index is None:
                # A server tool's input (web_search...): no tool of the client's.
                return None
            call = ToolCallDelta(index, arguments=piece)
            return Event(tool_calls=[call], raw=event)
        return None  # signature_delta, citations_delta
