"""chatd.dialects.presplit ~~~ TEMPORARY: neutral Reply/Event from today's adapters.

Until the wire/dialect split (issue 11) gives every adapter ``reply()`` and a
stream of neutral :class:`Event` objects, this reads them from the adapters'
OpenAI shapes (``openai_response``, ``openai_chunks``), which every wire format
already produces. NOTE: delete this module, and its two uses in
:mod:`chatd.anthropic_api`, once the split is on main.
"""

from __future__ import annotations

from collections.abc import Iterator

from chatd import codec
from chatd.adapters.base import ChunkContext
from chatd.neutral import Event, Reply, ToolCall, ToolCallDelta, Usage

REASONING_KEYS = ("reasoning", "reasoning_content", "thinking")


def _usage(data: dict) -> Usage | None:
    counts = data.get("usage")
    if not counts:
        return None
    return Usage(counts.get("prompt_tokens") or 0, counts.get("completion_tokens") or 0)


def _arguments(value) -> str:
    return value if isinstance(value, str) else codec.dumps(value or {}).decode()


def _reasoning(part: dict) -> str:
    return next((part[key] for key in REASONING_KEYS if part.get(key)), "")


def reply(adapter, request, upstream_model: str) -> Reply:
    if hasattr(adapter, "reply"):  # the split has landed
        return adapter.reply(request, upstream_model)
    data = adapter.complete(request, upstream_model)
    body = adapter.translate(adapter.openai_response, data, upstream_model)
    choice = body["choices"][0]
    message = choice["message"]
    calls = [
        ToolCall(
            call.get("id") or "",
            call["function"]["name"],
            _arguments(call["function"].get("arguments")),
        )
        for call in message.get("tool_calls") or ()
    ]
    return Reply(
        content=message.get("content") or "",
        thinking=_reasoning(message),
        tool_calls=calls,
        finish_reason=choice.get("finish_reason"),
        usage=_usage(body) or Usage(),
    )


def events(upstream, adapter, model: str) -> Iterator[Event]:
    if hasattr(adapter, "stream_reader"):  # the split has landed
        yield from upstream
        return
    context = ChunkContext(model=model, include_usage=True)
    for raw in upstream:
        for chunk in adapter.translate(adapter.openai_chunks, raw, context):
            event = Event(usage=_usage(chunk))
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                event.content = delta.get("content") or ""
                event.thinking = _reasoning(delta)
                event.finish_reason = choice.get("finish_reason")
                if delta.get("tool_calls"):
                    event.tool_calls = [
                        ToolCallDelta(
                            index=call.get("index", i),
                            id=call.get("id"),
                            name=(call.get("function") or {}).get("name"),
                            arguments=_arguments(
                                (call.get("function") or {}).get("arguments") or ""
                            ),
                        )
                        for i, call in enumerate(delta["tool_calls"])
                    ]
            yield event
