"""The Anthropic Messages wire format: what is sent, and how answers and streams are read.

Fixtures follow the shapes in shared/research/anthropic-responses.md section 1
(taken from the Anthropic SDK's types and its recorded stream fixtures).
Translation is tested pure; the transport (statuses, in-band errors, cuts)
through a strict ``responses`` mock.
"""

from __future__ import annotations

import json

import pytest

from chatd.adapters.anthropic import DEFAULT_MAX_TOKENS, AnthropicChatAdapter
from chatd.errors import BadRequest, UpstreamError, UpstreamRateLimited
from chatd.neutral import ChatRequest, Event, ToolCall, ToolCallDelta, Usage
from tests.conftest import make_wire_adapter, read_stream
from tests.fakes_wire import sse_stream

URL = "http://anthropic.test/v1"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def make_adapter(url: str = URL) -> AnthropicChatAdapter:
    return make_wire_adapter(AnthropicChatAdapter, "claude", url)


def request(messages, **fields) -> ChatRequest:
    return ChatRequest(model="claude/claude-sonnet-4-6", messages=messages, **fields)


def body_for(messages, **fields) -> dict:
    return make_adapter().build_body(request(messages, **fields), "claude-sonnet-4-6")


# -- request -----------------------------------------------------------------------


def test_system_turns_are_lifted_and_joined_and_max_tokens_defaults():
    body = body_for(
        [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "be kind"}]},
            {"role": "user", "content": "hi"},
        ]
    )
    assert body == {
        "model": "claude-sonnet-4-6",
        "system": "be brief\n\nbe kind",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": DEFAULT_MAX_TOKENS,
        "stream": False,
    }


def test_sampling_fields_are_mapped_and_temperature_clamped_to_anthropics_range():
    body = body_for(
        [{"role": "user", "content": "hi"}],
        max_tokens=321,
        temperature=1.7,
        top_p=0.9,
        stop=["\n\n", "END"],
        seed=7,
        stream=True,
    )
    assert body["max_tokens"] == 321
    assert body["temperature"] == 1.0
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["\n\n", "END"]
    assert body["stream"] is True
    assert "seed" not in body and "stop" not in body


def test_temperature_within_range_is_kept():
    assert body_for([{"role": "user", "content": "hi"}], temperature=0.3)["temperature"] == 0.3


def test_a_provider_default_max_tokens_replaces_the_constant():
    adapter = make_adapter()
    adapter.default_max_tokens = 1234
    body = adapter.build_body(request([{"role": "user", "content": "hi"}]), "m")
    assert body["max_tokens"] == 1234


def test_thinking_in_options_is_passed_and_leaves_the_answer_its_room():
    thinking = {"type": "enabled", "budget_tokens": 2048}
    body = body_for([{"role": "user", "content": "hi"}], options={"thinking": thinking})
    assert body["thinking"] == thinking
    # Thinking counts toward max_tokens: the budget comes on top of the default.
    assert body["max_tokens"] == 2048 + DEFAULT_MAX_TOKENS


def test_tools_and_tool_choice_are_mapped():
    body = body_for([{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL])
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_tool_choice_table(choice, expected):
    body = body_for([{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL], tool_choice=choice)
    assert body["tool_choice"] == expected


def test_a_tool_without_parameters_gets_an_empty_object_schema():
    tool = {"type": "function", "function": {"name": "now"}}
    body = body_for([{"role": "user", "content": "hi"}], tools=[tool])
    assert body["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]


def test_tool_calls_and_results_become_blocks_and_runs_are_merged():
    messages = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Rome"}},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "thanks; and?"},
    ]
    assert body_for(messages)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        # Both results and the next question in one user turn, results first.
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "rain"},
                {"type": "text", "text": "thanks; and?"},
            ],
        },
    ]


def test_an_assistant_turn_with_only_tool_calls_and_null_content():
    call = {"id": "t1", "type": "function", "function": {"name": "now", "arguments": ""}}
    messages = [
        {"role": "user", "content": "time?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    assert body_for(messages)["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "now", "input": {}}],
    }


def test_consecutive_user_turns_are_merged_and_empty_text_dropped():
    messages = [
        {"role": "user", "content": "one"},
        {"role": "user", "content": ""},
        {"role": "user", "content": "two"},
    ]
    assert body_for(messages)["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        }
    ]


def test_images_become_base64_or_url_sources():
    content = [
        {"type": "text", "text": "what is this?"},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
        },
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    blocks = body_for([{"role": "user", "content": content}])["messages"][0]["content"]
    assert blocks[1:] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    ("messages", "fields", "named"),
    [
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}],
                }
            ],
            {},
            "messages[0].content[0].image_url.url",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}],
                }
            ],
            {},
            "messages[0].content[0].image_url.url",
        ),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
            {},
            "messages[0].content[0].type",
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "t", "function": {"name": "f", "arguments": "{not json"}}
                    ],
                }
            ],
            {},
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "[1]"}}],
                }
            ],
            {},
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]}],
            {},
            "messages[0].tool_calls[0].id",
        ),
        ([{"role": "tool", "content": "x"}], {}, "messages[0].tool_call_id"),
        ([{"role": "user", "content": "hi"}], {"tools": [{"type": "web_search"}]}, "tools[0]"),
        ([{"role": "user", "content": "hi"}], {"tool_choice": "sometimes"}, "tool_choice"),
        ([{"role": "user", "content": "hi"}], {"format": "json"}, "format"),
    ],
)
def test_what_cannot_be_translated_is_a_bad_request_naming_the_field(messages, fields, named):
    with pytest.raises(BadRequest) as caught:
        body_for(messages, **fields)
    assert caught.value.message.startswith(named)


def test_an_anthropic_clients_body_is_passed_on_with_model_and_stream_replaced():
    native = {
        "model": "claude/claude-sonnet-4-6",
        "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "assistant",
                "content": [{"type": "thinking", "thinking": "hm", "signature": "sig"}],
            }
        ],
        "max_tokens": 99,
        # Anthropic's own (beta) field: chatd's dialect reads no fallbacks, so it is theirs.
        "fallbacks": [{"model": "claude-haiku-4-5"}],
        "stream": False,
    }
    req = request(
        [{"role": "user", "content": "ignored"}], stream=True, dialect="anthropic", native=native
    )
    body = make_adapter().build_body(req, "claude-sonnet-4-6")
    assert body == {**native, "model": "claude-sonnet-4-6", "stream": True}
    assert native["model"] == "claude/claude-sonnet-4-6"  # the client's body is not changed


def test_a_native_body_without_max_tokens_gets_the_default():
    native = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    req = request(native["messages"], dialect="anthropic", native=native)
    assert make_adapter().build_body(req, "m")["max_tokens"] == DEFAULT_MAX_TOKENS


# -- whole answers --------------------------------------------------------------------

ANSWER = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6",
    "content": [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": "c2ln"},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 20,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 100,
        "output_tokens": 42,
    },
}


def test_reply_has_text_thinking_tool_calls_finish_and_usage():
    reply = make_adapter().parse_reply(ANSWER)
    assert reply.content == "Let me check."
    assert reply.thinking == "The user wants weather."
    assert reply.tool_calls == [ToolCall("toolu_01", "get_weather", '{"city":"Paris"}')]
    assert reply.finish_reason == "tool_calls"
    # OpenAI's prompt count includes the cached tokens; Anthropic's input_tokens does not.
    assert reply.usage == Usage(prompt_tokens=123, completion_tokens=42)
    assert reply.raw is ANSWER


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", None),
    ],
)
def test_stop_reason_table(stop_reason, finish):
    data = {"content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason, "usage": {}}
    assert make_adapter().parse_reply(data).finish_reason == finish


def test_text_blocks_are_joined_and_unknown_blocks_skipped():
    data = {
        "content": [
            {"type": "text", "text": "Hel"},
            {"type": "redacted_thinking", "data": "xx"},
            {"type": "text", "text": "lo"},
        ],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    reply = make_adapter().parse_reply(data)
    assert (reply.content, reply.thinking, reply.tool_calls) == ("Hello", "", [])


def test_models_are_read_from_data_ids():
    data = {"data": [{"id": "claude-sonnet-4-6", "type": "model"}, {"id": "claude-haiku-4-5"}]}
    assert make_adapter().parse_models(data) == ["claude-sonnet-4-6", "claude-haiku-4-5"]


# -- streams ------------------------------------------------------------------------

STREAM = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 11, "cache_read_input_tokens": 4, "output_tokens": 1},
        },
    },
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "Simple "},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "question."},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "signature_delta", "signature": "c2ln"},
    },
    {"type": "content_block_stop", "index": 0},
    {"type": "ping"},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_stop", "index": 1},
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": ""},
    },
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": '{"city"'},
    },
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": ': "Paris"}'},
    },
    {"type": "content_block_stop", "index": 2},
    {
        "type": "content_block_start",
        "index": 3,
        "content_block": {"type": "tool_use", "id": "toolu_02", "name": "now", "input": {}},
    },
    {"type": "content_block_stop", "index": 3},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 30},
    },
    {"type": "message_stop"},
]


def adds(event: Event) -> bool:
    """Whether a neutral event carries anything but the raw upstream event."""
    return bool(
        event.content or event.thinking or event.tool_calls or event.finish_reason or event.usage
    )


def read(events) -> list[Event]:
    reader = make_adapter().stream_reader()
    return [e for e in map(reader, events) if adds(e)]


def test_stream_reads_thinking_text_tool_calls_finish_and_usage():
    events = read(STREAM)
    assert [(e.content, e.thinking) for e in events[:3]] == [
        ("", "Simple "),
        ("", "question."),
        ("Hello", ""),
    ]
    calls = [d for e in events for d in (e.tool_calls or [])]
    # Tool calls are numbered by their own counter (0, 1), not the block index (2, 3).
    assert calls == [
        ToolCallDelta(0, "toolu_01", "get_weather", ""),
        ToolCallDelta(0, arguments='{"city"'),
        ToolCallDelta(0, arguments=': "Paris"}'),
        ToolCallDelta(1, "toolu_02", "now", ""),
    ]
    last = events[-1]
    assert last.finish_reason == "tool_calls"
    assert last.usage == Usage(prompt_tokens=15, completion_tokens=30)
    assert last.raw == STREAM[-2]


def test_stream_events_that_add_nothing_read_as_empty_events_keeping_the_raw_one():
    """So an Anthropic client can be answered with the upstream's own events."""
    reader = make_adapter().stream_reader()
    nothing = [STREAM[0], STREAM[1], STREAM[4], STREAM[5], STREAM[6], STREAM[-1]]
    assert [reader(e) for e in nothing] == [Event(raw=e) for e in nothing]


def test_each_stream_gets_its_own_reader():
    adapter = make_adapter()
    first, second = adapter.stream_reader(), adapter.stream_reader()
    first(STREAM[10])  # a tool call starts in the first stream only
    assert second(STREAM[15]).tool_calls[0].index == 0


def test_an_error_event_without_a_message_raises_upstream_error():
    with pytest.raises(UpstreamError, match="failed mid-stream"):
        make_adapter().stream_reader()({"type": "error", "error": {"type": "overloaded_error"}})


# -- over HTTP --------------------------------------------------------------------------


def stream_through(adapter, req) -> list[Event]:
    return read_stream(adapter, req, "claude-sonnet-4-6")


def test_a_whole_answer_over_http(upstream):
    upstream.post(URL + "/messages", json=ANSWER)
    adapter = make_adapter()
    data = adapter.complete(request([{"role": "user", "content": "hi"}]), "claude-sonnet-4-6")
    assert adapter.parse_reply(data).tool_calls[0].name == "get_weather"
    assert json.loads(upstream.calls[0].request.body)["max_tokens"] == DEFAULT_MAX_TOKENS


def test_a_stream_over_http_ends_at_message_stop(upstream):
    # Anything after message_stop is never read.
    body = sse_stream(STREAM) + b'event: junk\ndata: {"type": "content_block_delta"}\n\n'
    upstream.post(URL + "/messages", body=body, content_type="text/event-stream")
    events = stream_through(
        make_adapter(), request([{"role": "user", "content": "hi"}], stream=True)
    )
    assert [e.finish_reason for e in events if e.finish_reason] == ["tool_calls"]
    assert events[-1].raw == {"type": "message_stop"}


def test_a_stream_cut_before_message_stop_is_an_upstream_error(upstream):
    upstream.post(URL + "/messages", body=sse_stream(STREAM[:-1]), content_type="text/event-stream")
    with pytest.raises(UpstreamError, match="broke off"):
        stream_through(make_adapter(), request([{"role": "user", "content": "hi"}], stream=True))


def test_an_in_band_error_event_is_an_upstream_error_with_its_message(upstream):
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    upstream.post(
        URL + "/messages", body=sse_stream([*STREAM[:3], error]), content_type="text/event-stream"
    )
    with pytest.raises(UpstreamError, match="failed mid-stream: Overloaded"):
        stream_through(make_adapter(), request([{"role": "user", "content": "hi"}], stream=True))


def test_429_keeps_retry_after_and_the_envelopes_message(upstream):
    envelope = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    upstream.post(URL + "/messages", status=429, json=envelope, headers={"Retry-After": "7"})
    with pytest.raises(UpstreamRateLimited) as caught:
        make_adapter().complete(request([{"role": "user", "content": "hi"}]), "m")
    error = caught.value
    assert error.retryable and error.retry_after == 7.0
    assert error.headers == {"Retry-After": "7"}
    assert "slow down" in error.message


def test_529_overloaded_is_retryable_like_503(upstream):
    envelope = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    upstream.post(URL + "/messages", status=529, json=envelope, headers={"Retry-After": "3"})
    with pytest.raises(UpstreamError) as caught:
        make_adapter().complete(request([{"role": "user", "content": "hi"}]), "m")
    error = caught.value
    assert error.retryable and error.retry_after == 3.0
    assert error.details["upstream_status"] == 529
    assert "answered 529: Overloaded" in error.message


def test_400_is_not_retryable_and_passes_the_message_on(upstream):
    envelope = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: too big"},
    }
    upstream.post(URL + "/messages", status=400, json=envelope)
    with pytest.raises(UpstreamError) as caught:
        make_adapter().complete(request([{"role": "user", "content": "hi"}]), "m")
    assert not caught.value.retryable
    assert "max_tokens: too big" in caught.value.message


# -- against the loopback fake (tests/fakes_wire.py) -----------------------------------


@pytest.fixture(scope="module")
def fake():
    from tests.fakes_wire import FakeAnthropic

    with FakeAnthropic("from claude", thinking="Let me think.") as fake:
        yield fake


@pytest.fixture
def live(fake):
    fake.behave()
    return make_adapter(fake.url + "/v1")


WEATHER_CALL = ToolCall("toolu_fake1", "get_weather", '{"city":"Paris"}')


def test_live_answer_and_tool_call(live, fake):
    reply = live.parse_reply(live.complete(request([{"role": "user", "content": "hi"}]), "m"))
    assert (reply.content, reply.thinking, reply.finish_reason) == (
        "from claude",
        "Let me think.",
        "stop",
    )
    assert reply.usage == Usage(13, 5)
    with_tools = request([{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL])
    reply = live.parse_reply(live.complete(with_tools, "m"))
    assert (reply.tool_calls, reply.finish_reason) == ([WEATHER_CALL], "tool_calls")
    assert fake.chat_requests()[-1].json["tools"][0]["input_schema"]["type"] == "object"


def test_live_stream_with_tools_rebuilds_the_call(live):
    req = request([{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL], stream=True)
    events = stream_through(live, req)
    assert "".join(e.thinking for e in events) == "Let me think."
    deltas = [d for e in events for d in (e.tool_calls or [])]
    assert {d.index for d in deltas} == {0}
    assert (deltas[0].id, deltas[0].name) == ("toolu_fake1", "get_weather")
    assert json.loads("".join(d.arguments for d in deltas)) == {"city": "Paris"}
    assert [e.finish_reason for e in events if e.finish_reason] == ["tool_calls"]
    assert events[-1].raw == {"type": "message_stop"}


@pytest.mark.parametrize(
    ("option", "match"), [("cut_after", "broke off"), ("error_after", "the model crashed")]
)
def test_live_stream_cut_or_failing_midway(live, fake, option, match):
    fake.behave(**{option: 4})
    with pytest.raises(UpstreamError, match=match):
        stream_through(live, request([{"role": "user", "content": "hi"}], stream=True))


def test_live_529_is_retryable(live, fake):
    envelope = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    fake.behave("status", status=529, body=envelope)
    with pytest.raises(UpstreamError) as caught:
        live.complete(request([{"role": "user", "content": "hi"}]), "m")
    assert caught.value.retryable and caught.value.details["upstream_status"] == 529


def test_live_models(live):
    assert live.list_models(timeout=2) == ["fake-model"]


def test_every_call_carries_the_anthropic_version_header(upstream):
    upstream.post(URL + "/messages", json=ANSWER)
    reply = make_adapter().reply(request([{"role": "user", "content": "hi"}]), "m")
    assert reply.content == "Let me check."
    assert upstream.calls[0].request.headers["anthropic-version"] == "2023-06-01"


def test_a_server_tools_input_is_not_taken_for_a_client_tool_call():
    """web_search's input streams as input_json_delta too; it is no call of the client's."""
    reader = make_adapter().stream_reader()
    start = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search"},
    }
    piece = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "input_json_delta", "partial_json": '{"query": "x"}'},
    }
    assert reader(start) == Event(raw=start)
    assert reader(piece) == Event(raw=piece)


@pytest.mark.parametrize("value", ["7", 3.5, None, True])
def test_a_token_count_that_is_not_an_integer_counts_zero(value):
    answer = {
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 4, "output_tokens": value},
    }
    assert make_adapter().parse_reply(answer).usage == Usage(4, 0)
