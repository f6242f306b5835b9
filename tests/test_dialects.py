"""The /chat and /v1 dialects, fed neutral events and replies by hand."""

from __future__ import annotations

import json

from chatd.dialects import chat, openai
from chatd.neutral import Event, Reply, ToolCall, ToolCallDelta, Usage
from chatd.routing import Route

ROUTE = Route("ollama", "llama3.2")
EVENTS = [
    Event(thinking="hmm"),
    Event(content="Hel"),
    Event(tool_calls=[ToolCallDelta(0, "c1", "weather", '{"ci')]),
    Event(tool_calls=[ToolCallDelta(0, None, None, 'ty":"Oslo"}')]),
    Event(finish_reason="tool_calls"),
    Event(usage=Usage(5, 7)),
]


def frames(rendered) -> list:
    out = []
    for frame in rendered:
        assert frame.endswith(b"\n\n")
        payload = frame.decode().removeprefix("data: ").strip()
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_chat_stream_has_a_delta_per_piece_then_the_totals_then_done():
    got = frames(chat.render_stream(iter(EVENTS), ROUTE))
    assert [f["delta"] for f in got[:4]] == [
        {"thinking": "hmm"},
        {"content": "Hel"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"ci'},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Oslo"}'}}]},
    ]
    assert got[4]["done_reason"] == "tool_calls"
    assert got[4]["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    assert got[5] == "[DONE]" and len(got) == 6


def test_openai_stream_is_chunks_with_one_finish_and_usage_only_when_asked():
    asked = frames(openai.render_stream(iter(EVENTS), "ollama/llama3.2", include_usage=True))
    assert asked[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
        "reasoning": "hmm",
    }
    assert {chunk["model"] for chunk in asked[:-1]} == {"ollama/llama3.2"}
    assert len({chunk["id"] for chunk in asked[:-1]}) == 1
    finishes = [c["choices"][0]["finish_reason"] for c in asked[:-1] if c["choices"]]
    assert finishes[-1] == "tool_calls" and finishes.count("tool_calls") == 1
    assert asked[-2]["choices"] == [] and asked[-2]["usage"]["total_tokens"] == 12
    assert asked[-1] == "[DONE]"
    not_asked = frames(openai.render_stream(iter(EVENTS), "m", include_usage=False))
    assert all(chunk["choices"] for chunk in not_asked[:-1])


def test_openai_passthrough_keeps_the_upstream_chunk_and_renames_the_model():
    raw = {"id": "x", "choices": [{"delta": {"content": "a"}}], "system_fingerprint": "fp"}
    usage_only = {"id": "x", "choices": [], "usage": {"prompt_tokens": 1}}
    events = [Event(content="a", raw=raw), Event(raw=usage_only)]
    got = frames(openai.render_stream(iter(events), "kimi/k", False, passthrough=True))
    assert got == [{**raw, "model": "kimi/k"}, "[DONE]"]


def test_whole_replies():
    reply = Reply(
        content="",
        thinking="t",
        tool_calls=[ToolCall("c1", "weather", "{}")],
        finish_reason="tool_calls",
        usage=Usage(1, 2),
    )
    body = chat.render_reply(reply, ROUTE)
    assert body["message"]["tool_calls"][0]["function"] == {"name": "weather", "arguments": "{}"}
    assert body["message"]["thinking"] == "t" and body["done_reason"] == "tool_calls"
    completion = openai.render_reply(reply, "ollama/llama3.2")
    assert completion["choices"][0]["message"]["reasoning"] == "t"
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    assert completion["usage"]["total_tokens"] == 3
