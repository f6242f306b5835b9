"""chatd.dialects.chat ~~~ chatd's own ``/chat`` shape.

One normalized answer whatever served it: ``message`` (content, thinking,
OpenAI-style tool calls), ``done_reason``, ``usage``; streamed as SSE
``delta`` events, a last event with ``done_reason`` and ``usage``, then
``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import Iterator

from chatd import codec
from chatd.neutral import Event, Reply, ToolCall, ToolCallDelta, Usage
from chatd.routing import Route

DONE = b"data: [DONE]\n\n"


def sse(data: dict) -> bytes:
    return b"data: " + codec.dumps(data) + b"\n\n"


def tool_call(call: ToolCall) -> dict:
    """A whole tool call in OpenAI's shape (arguments as JSON text)."""
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def tool_call_delta(call: ToolCallDelta) -> dict:
    """A streamed tool-call piece in OpenAI's delta shape: id and name on the first piece."""
    piece: dict = {"index": call.index}
    function: dict = {"arguments": call.arguments}
    if call.id is not None:
        piece["id"] = call.id
        piece["type"] = "function"
    if call.name is not None:
        function["name"] = call.name
    piece["function"] = function
    return piece


def delta(event: Event, thinking_key: str = "thinking") -> dict:
    """What ``event`` adds, as an OpenAI-style ``delta`` (reasoning under ``thinking_key``)."""
    out = {}
    if event.content:
        out["content"] = event.content
    if event.thinking:
        out[thinking_key] = event.thinking
    if event.tool_calls:
        out["tool_calls"] = [tool_call_delta(call) for call in event.tool_calls]
    return out


def message(reply: Reply, thinking_key: str = "thinking") -> dict:
    """A whole answer as an OpenAI-style assistant message (reasoning under ``thinking_key``)."""
    out: dict = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        out["tool_calls"] = [tool_call(call) for call in reply.tool_calls]
    if reply.thinking:
        out[thinking_key] = reply.thinking
    return out


def render_reply(reply: Reply, route: Route) -> dict:
    return {
        "model": route.upstream_model,
        "provider": route.provider,
        "message": message(reply),
        "done_reason": reply.finish_reason,
        "usage": reply.usage.as_dict(),
    }


def render_stream(events: Iterator[Event], route: Route) -> Iterator[bytes]:
    head = {"model": route.upstream_model, "provider": route.provider}
    finish = None
    usage = None
    for event in events:
        added = delta(event)
        if added:
            yield sse({**head, "delta": added})
        finish = event.finish_reason or finish
        usage = event.usage or usage
    usage = (usage or Usage()).as_dict()
    yield sse({**head, "delta": {}, "done_reason": finish, "usage": usage})
    yield DONE


def render_stream_error(body: dict) -> bytes:
    """A mid-stream failure: an ``error`` event, and no [DONE] after it."""
    return b"event: error\ndata: " + codec.dumps(body) + b"\n\n"
