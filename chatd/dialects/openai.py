"""chatd.dialects.openai ~~~ OpenAI chat completions, for ``/v1``.

Whole answers are ``chat.completion`` objects, streams ``chat.completion.chunk``
events ending in ``data: [DONE]``, named with the model the client asked for.
When the upstream speaks OpenAI's wire format too, its answer and chunks pass
through with only ``model`` rewritten (nothing of theirs is lost: logprobs,
system_fingerprint, provider extras).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from chatd.dialects.chat import DONE, delta, message, render_stream_error, sse
from chatd.neutral import Event, Reply

__all__ = ["render_reply", "render_stream", "render_stream_error"]


def render_reply(reply: Reply, model: str, passthrough: bool = False) -> dict:
    if passthrough and reply.raw is not None:
        return {**reply.raw, "model": model}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message(reply, "reasoning"),
                "finish_reason": reply.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": reply.usage.as_dict(),
    }


def render_stream(
    events: Iterator[Event], model: str, include_usage: bool, passthrough: bool = False
) -> Iterator[bytes]:
    """The chunks, then [DONE]. A usage-only chunk (``choices: []``) only when the
    client asked with ``stream_options.include_usage``: SDK code often reads
    ``choices[0]`` of every chunk."""
    if passthrough:
        yield from _passed_through(events, model, include_usage)
        return
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    # The first chunk says who speaks, as OpenAI's do.
    first = {"role": "assistant", "content": ""}
    finish = None
    usage = None
    for event in events:
        added = delta(event, "reasoning")
        if first is not None:
            added, first = {**first, **added}, None
        if added:
            yield sse({**head, "choices": [{"index": 0, "delta": added, "finish_reason": None}]})
        finish = event.finish_reason or finish
        usage = event.usage or usage
    yield sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish or "stop"}]})
    if include_usage and usage is not None:
        yield sse({**head, "choices": [], "usage": usage.as_dict()})
    yield DONE


def _passed_through(events: Iterator[Event], model: str, include_usage: bool) -> Iterator[bytes]:
    for event in events:
        chunk = event.raw
        if not chunk.get("choices") and not include_usage:
            continue
        chunk["model"] = model
        yield sse(chunk)
    yield DONE
