"""chatd.neutral ~~~ The neutral shapes where wire formats and client dialects meet.

A *wire format* (:mod:`chatd.adapters`: how an upstream is spoken) turns the
upstream's answer into a :class:`Reply`, or each of its stream events into
:class:`Event` objects. A *client dialect* (:mod:`chatd.dialects`: what a caller
is answered in: chatd's ``/chat``, OpenAI's ``/v1``, Ollama's ``/api``,
Anthropic's ``/v1/messages``) renders those for its clients and reads its
clients' requests into a :class:`ChatRequest`. Neither side knows the other,
so N wire formats and M dialects cost N + M modules.

The vocabulary is OpenAI chat completions' (the shape most clients and most
upstreams share): messages with content parts, tool calls whose arguments are
JSON text, finish reasons ``stop``, ``length``, ``tool_calls`` and
``content_filter``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Finish reasons as the neutral shapes name them.
STOP, LENGTH, TOOL_CALLS, CONTENT_FILTER = "stop", "length", "tool_calls", "content_filter"
#: Knobs several dialects carry and several wire formats take, each under its
#: own name or not at all: typed fields, so each wire maps what it can and
#: drops the rest (never an unknown field that an upstream answers 400 to).
KNOBS = (
    "reasoning_effort",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "parallel_tool_calls",
)
#: OpenAI's reasoning_effort values (``none`` turns reasoning off).
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


@dataclass(slots=True)
class ChatRequest:
    """One chat call, checked: what every dialect's request is read into.

    ``messages`` and ``tools`` are in OpenAI chat-completions shape: content a
    string or a list of parts (``text``, ``image_url``), assistant
    ``tool_calls`` with ``function.arguments`` as JSON text (an object is
    tolerated), ``tool`` turns with ``tool_call_id``; tools as
    ``{"type": "function", "function": {name, description, parameters}}``.
    """

    model: str
    messages: list
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    #: "json" for JSON mode, or a JSON-schema object for structured output.
    format: str | dict | None = None
    #: One of REASONING_EFFORTS: how hard a reasoning model thinks.
    reasoning_effort: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    #: False: the model may call at most one tool per turn.
    parallel_tool_calls: bool | None = None
    #: Extras written for the upstream, merged last into what is sent there: a
    #: /chat caller's provider-native ones (every wire), or the fields a /v1
    #: client sent that chatd has no name for (OpenAI-style wires only).
    options: dict = field(default_factory=dict)
    tools: list | None = None
    tool_choice: str | dict | None = None
    stream: bool = False
    #: Model names tried in order when the model's provider cannot serve.
    fallbacks: list[str] | None = None
    #: Set by chatd, not the client: forwarded upstream as X-Request-ID.
    request_id: str = ""
    #: The dialect the client spoke ("chatd", "openai", "ollama", "anthropic") and
    #: its body as sent: a wire format that speaks the same dialect may pass it on
    #: with as little translation as correctness allows.
    dialect: str = "chatd"
    native: dict | None = None
    #: Headers of the client's own dialect for such an upstream (anthropic-beta).
    native_headers: dict | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class ToolCall:
    """One whole tool call of an answer."""

    id: str
    name: str
    #: JSON text, as OpenAI carries it ("{}" when the model gave none).
    arguments: str


@dataclass(slots=True)
class Reply:
    """A whole (non-streamed) answer."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    #: stop, length, tool_calls, content_filter; None when the upstream did not say.
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    #: The upstream's answer as decoded, for a dialect that is the same as the wire.
    raw: dict | None = None


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call. The first piece of a call carries its
    ``id`` and ``name``; ``arguments`` pieces concatenate to the call's JSON text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Event:
    """What one upstream stream event added; any field may be empty.

    ``finish_reason`` and ``usage`` usually come once, near the end (usage may
    come in an event of its own, after the finish reason).
    """

    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCallDelta] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    #: The upstream's event as decoded, for a dialect that is the same as the wire.
    raw: dict | None = None
