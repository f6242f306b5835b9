"""The OpenAI Responses wire format: what is sent, and how answers and streams are read.

Fixtures follow the shapes in shared/research/anthropic-responses.md section 2
(built from the openai SDK's ``types/responses``). Translation is tested pure;
the transport (statuses, in-band errors, cuts) through a strict ``responses`` mock.
"""

from __future__ import annotations

import json

import pytest

from chatd.adapters.responses import ResponsesChatAdapter
from chatd.errors import BadRequest, UpstreamError, UpstreamRateLimited
from chatd.neutral import ChatRequest, Event, ToolCall, ToolCallDelta, Usage
from tests.conftest import make_wire_adapter, read_stream
from tests.fakes_wire import sse_stream

URL = "http://responses.test/v1"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}


def make_adapter(url: str = URL) -> ResponsesChatAdapter:
    return make_wire_adapter(ResponsesChatAdapter, "gpt", url)


def request(messages, **fields) -> ChatRequest:
    return ChatRequest(model="opencode/gpt-5.2", messages=messages, **fields)


def body_for(messages, **fields) -> dict:
    return make_adapter().build_body(request(messages, **fields), "gpt-5.2")


# -- request -----------------------------------------------------------------------


def test_system_turns_become_instructions_and_store_is_off():
    body = body_for(
        [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": "be kind"},
            {"role": "user", "content": "hi"},
        ]
    )
    assert body == {
        "model": "gpt-5.2",
        "instructions": "be brief\n\nbe kind",
        "input": [{"role": "user", "content": "hi"}],
        "stream": False,
        "store": False,
    }


def test_sampling_fields_are_mapped():
    body = body_for(
        [{"role": "user", "content": "hi"}],
        max_tokens=321,
        temperature=1.5,
        top_p=0.9,
        seed=7,
        stream=True,
        options={"reasoning": {"effort": "low", "summary": "auto"}},
    )
    assert body["max_output_tokens"] == 321
    assert body["temperature"] == 1.5
    assert body["top_p"] == 0.9
    assert body["stream"] is True
    assert body["reasoning"] == {"effort": "low", "summary": "auto"}
    assert "seed" not in body and "max_tokens" not in body


@pytest.mark.parametrize(
    ("format_", "expected"),
    [
        ("json", {"type": "json_object"}),
        (
            {"type": "object", "properties": {}},
            {
                "type": "json_schema",
                "name": "response",
                "schema": {"type": "object", "properties": {}},
            },
        ),
    ],
)
def test_format_becomes_text_format(format_, expected):
    assert body_for([{"role": "user", "content": "hi"}], format=format_)["text"] == {
        "format": expected
    }


def test_stop_is_refused_because_responses_has_no_stop_sequences():
    with pytest.raises(BadRequest, match="^stop "):
        body_for([{"role": "user", "content": "hi"}], stop=["\n"])


def test_tools_are_flattened_and_tool_choice_mapped():
    body = body_for(
        [{"role": "user", "content": "hi"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert body["tools"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": True,
        }
    ]
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_string_tool_choices_are_the_same(choice):
    assert (
        body_for([{"role": "user", "content": "hi"}], tool_choice=choice)["tool_choice"] == choice
    )


def test_tool_calls_and_results_become_items():
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Rome"}},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    ]
    assert body_for(messages)["input"] == [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"role": "assistant", "content": "Checking."},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {
            "type": "function_call",
            "call_id": "call_2",
            "name": "get_weather",
            "arguments": '{"city":"Rome"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": "rain"},
    ]


def test_images_become_input_image_parts():
    content = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO", "detail": "low"}},
        {"type": "image_url", "image_url": "https://example.com/cat.jpg"},
    ]
    assert body_for([{"role": "user", "content": content}])["input"][0]["content"] == [
        {"type": "input_image", "image_url": "data:image/png;base64,iVBO", "detail": "low"},
        {"type": "input_image", "image_url": "https://example.com/cat.jpg", "detail": "auto"},
    ]


@pytest.mark.parametrize(
    ("messages", "fields", "named"),
    [
        (
            [{"role": "user", "content": [{"type": "input_audio"}]}],
            {},
            "messages[0].content[0].type",
        ),
        ([{"role": "tool", "content": "x"}], {}, "messages[0].tool_call_id"),
        (
            [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {}}]}],
            {},
            "messages[0].tool_calls[0].function.name",
        ),
        ([{"role": "user", "content": "hi"}], {"tools": [{"type": "web_search"}]}, "tools[0]"),
        (
            [{"role": "user", "content": "hi"}],
            {"tool_choice": {"type": "file_search"}},
            "tool_choice",
        ),
    ],
)
def test_what_cannot_be_translated_is_a_bad_request_naming_the_field(messages, fields, named):
    with pytest.raises(BadRequest) as caught:
        body_for(messages, **fields)
    assert caught.value.message.startswith(named)


# -- whole answers --------------------------------------------------------------------

ANSWER = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1754000000,
    "status": "completed",
    "model": "gpt-5.2",
    "error": None,
    "incomplete_details": None,
    "output": [
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [{"type": "summary_text", "text": "Needs weather."}],
        },
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}],
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
            "status": "completed",
        },
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": {
        "input_tokens": 40,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 12,
        "output_tokens_details": {"reasoning_tokens": 4},
        "total_tokens": 52,
    },
}


def test_reply_has_text_thinking_tool_calls_finish_and_usage():
    reply = make_adapter().parse_reply(ANSWER)
    assert reply.content == "Let me check."
    assert reply.thinking == "Needs weather."
    assert reply.tool_calls == [ToolCall("call_1", "get_weather", '{"city":"Paris"}')]
    assert reply.finish_reason == "tool_calls"
    assert reply.usage == Usage(prompt_tokens=40, completion_tokens=12)
    assert reply.raw is ANSWER


@pytest.mark.parametrize(
    ("status", "details", "finish"),
    [
        ("completed", None, "stop"),
        ("incomplete", {"reason": "max_output_tokens"}, "length"),
        ("incomplete", {"reason": "content_filter"}, "content_filter"),
        ("in_progress", None, None),
    ],
)
def test_status_table(status, details, finish):
    data = {
        "status": status,
        "incomplete_details": details,
        "output": [
            {
                "type": "message",
                "content": [{"type": "output_text", "text": "x", "annotations": []}],
            }
        ],
    }
    assert make_adapter().parse_reply(data).finish_reason == finish


def test_a_failed_response_without_an_error_message_is_an_upstream_error():
    with pytest.raises(UpstreamError, match="failed: status failed"):
        make_adapter().parse_reply({"status": "failed", "error": None, "output": []})


def test_a_refusal_is_read_as_content():
    data = {
        "status": "completed",
        "output": [{"type": "message", "content": [{"type": "refusal", "refusal": "I can't."}]}],
    }
    assert make_adapter().parse_reply(data).content == "I can't."


# -- streams ------------------------------------------------------------------------

STREAM = [
    {
        "type": "response.created",
        "sequence_number": 0,
        "response": {"id": "resp_1", "status": "in_progress", "output": []},
    },
    {
        "type": "response.in_progress",
        "sequence_number": 1,
        "response": {"id": "resp_1", "status": "in_progress"},
    },
    {
        "type": "response.output_item.added",
        "sequence_number": 2,
        "output_index": 0,
        "item": {"type": "reasoning", "id": "rs_1", "summary": []},
    },
    {
        "type": "response.reasoning_summary_text.delta",
        "sequence_number": 3,
        "item_id": "rs_1",
        "output_index": 0,
        "summary_index": 0,
        "delta": "Needs weather.",
    },
    {
        "type": "response.output_item.added",
        "sequence_number": 4,
        "output_index": 1,
        "item": {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        },
    },
    {
        "type": "response.content_part.added",
        "sequence_number": 5,
        "item_id": "msg_1",
        "output_index": 1,
        "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": []},
    },
    {
        "type": "response.output_text.delta",
        "sequence_number": 6,
        "item_id": "msg_1",
        "output_index": 1,
        "content_index": 0,
        "delta": "Hi",
        "logprobs": [],
    },
    {
        "type": "response.output_text.done",
        "sequence_number": 7,
        "item_id": "msg_1",
        "output_index": 1,
        "content_index": 0,
        "text": "Hi",
        "logprobs": [],
    },
    {
        "type": "response.output_item.added",
        "sequence_number": 8,
        "output_index": 2,
        "item": {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": "",
            "status": "in_progress",
        },
    },
    {
        "type": "response.function_call_arguments.delta",
        "sequence_number": 9,
        "item_id": "fc_1",
        "output_index": 2,
        "delta": '{"city":',
    },
    {
        "type": "response.function_call_arguments.delta",
        "sequence_number": 10,
        "item_id": "fc_1",
        "output_index": 2,
        "delta": '"Paris"}',
    },
    {
        "type": "response.function_call_arguments.done",
        "sequence_number": 11,
        "item_id": "fc_1",
        "output_index": 2,
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    },
    {
        "type": "response.output_item.added",
        "sequence_number": 12,
        "output_index": 3,
        "item": {
            "type": "function_call",
            "id": "fc_2",
            "call_id": "call_2",
            "name": "now",
            "arguments": "",
            "status": "in_progress",
        },
    },
    {
        "type": "response.completed",
        "sequence_number": 13,
        "response": {
            "id": "resp_1",
            "status": "completed",
            "output": [],
            "usage": {"input_tokens": 40, "output_tokens": 12, "total_tokens": 52},
        },
    },
]


def read(events) -> list[Event]:
    reader = make_adapter().stream_reader()
    return [e for e in map(reader, events) if e is not None]


def test_stream_reads_thinking_text_tool_calls_finish_and_usage():
    events = read(STREAM)
    assert [(e.content, e.thinking) for e in events[:2]] == [("", "Needs weather."), ("Hi", "")]
    calls = [d for e in events for d in (e.tool_calls or [])]
    # Numbered by their own counter (0, 1), not by output_index (2, 3).
    assert calls == [
        ToolCallDelta(0, "call_1", "get_weather", ""),
        ToolCallDelta(0, arguments='{"city":'),
        ToolCallDelta(0, arguments='"Paris"}'),
        ToolCallDelta(1, "call_2", "now", ""),
    ]
    assert events[-1].finish_reason == "tool_calls"
    assert events[-1].usage == Usage(prompt_tokens=40, completion_tokens=12)


def test_a_stream_without_tool_calls_finishes_with_stop():
    events = read([*STREAM[4:8], STREAM[-1]])
    assert [e.content for e in events] == ["Hi", ""]
    assert events[-1].finish_reason == "stop"


def test_an_incomplete_stream_finishes_with_length():
    incomplete = {
        "type": "response.incomplete",
        "response": {
            "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
            "usage": {"input_tokens": 5, "output_tokens": 9},
        },
    }
    event = make_adapter().stream_reader()(incomplete)
    assert (event.finish_reason, event.usage) == ("length", Usage(5, 9))


@pytest.mark.parametrize(
    "event",
    [
        {
            "type": "response.failed",
            "response": {
                "status": "failed",
                "error": {"code": "server_error", "message": "the model crashed"},
            },
        },
        {
            "type": "error",
            "sequence_number": 3,
            "code": "server_error",
            "message": "the model crashed",
            "param": None,
        },
    ],
)
def test_failure_events_raise_upstream_error_with_their_message(event):
    with pytest.raises(UpstreamError, match="gpt failed: the model crashed"):
        make_adapter().stream_reader()(event)


# -- over HTTP --------------------------------------------------------------------------


def stream_through(adapter, req) -> list[Event]:
    return read_stream(adapter, req, "gpt-5.2")


def test_a_whole_answer_over_http(upstream):
    upstream.post(URL + "/responses", json=ANSWER)
    adapter = make_adapter()
    data = adapter.complete(request([{"role": "user", "content": "hi"}]), "gpt-5.2")
    assert adapter.parse_reply(data).content == "Let me check."
    assert json.loads(upstream.calls[0].request.body)["store"] is False


def test_a_failed_answer_over_http_is_an_upstream_error(upstream):
    failed = {**ANSWER, "status": "failed", "error": {"code": "server_error", "message": "boom"}}
    upstream.post(URL + "/responses", json=failed)
    with pytest.raises(UpstreamError, match="boom"):
        make_adapter().complete(request([{"role": "user", "content": "hi"}]), "gpt-5.2")


def test_a_stream_over_http_ends_at_response_completed(upstream):
    body = (
        sse_stream(STREAM) + b'data: {"type": "response.output_text.delta", "delta": "never"}\n\n'
    )
    upstream.post(URL + "/responses", body=body, content_type="text/event-stream")
    events = stream_through(
        make_adapter(), request([{"role": "user", "content": "hi"}], stream=True)
    )
    assert "never" not in "".join(e.content for e in events)
    assert events[-1].finish_reason == "tool_calls"


def test_a_stream_cut_before_its_end_is_an_upstream_error(upstream):
    upstream.post(
        URL + "/responses", body=sse_stream(STREAM[:-1]), content_type="text/event-stream"
    )
    with pytest.raises(UpstreamError, match="broke off"):
        stream_through(make_adapter(), request([{"role": "user", "content": "hi"}], stream=True))


def test_a_failed_stream_over_http_is_an_upstream_error(upstream):
    failed = {
        "type": "response.failed",
        "response": {"status": "failed", "error": {"message": "overloaded"}},
    }
    upstream.post(
        URL + "/responses", body=sse_stream([*STREAM[:7], failed]), content_type="text/event-stream"
    )
    with pytest.raises(UpstreamError, match="gpt failed: overloaded"):
        stream_through(make_adapter(), request([{"role": "user", "content": "hi"}], stream=True))


def test_429_keeps_retry_after_and_the_message(upstream):
    envelope = {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    }
    upstream.post(URL + "/responses", status=429, json=envelope, headers={"Retry-After": "11"})
    with pytest.raises(UpstreamRateLimited) as caught:
        make_adapter().complete(request([{"role": "user", "content": "hi"}]), "gpt-5.2")
    assert caught.value.retryable and caught.value.retry_after == 11.0
    assert "Rate limit reached" in caught.value.message


# -- against the loopback fake (tests/fakes_wire.py) -----------------------------------


@pytest.fixture(scope="module")
def fake():
    from tests.fakes_wire import FakeResponses

    with FakeResponses("from gpt", thinking="Let me think.") as fake:
        yield fake


@pytest.fixture
def live(fake):
    fake.behave()
    return make_adapter(fake.url + "/v1")


def test_live_answer_and_tool_call(live, fake):
    reply = live.parse_reply(live.complete(request([{"role": "user", "content": "hi"}]), "m"))
    assert (reply.content, reply.thinking, reply.finish_reason) == (
        "from gpt",
        "Let me think.",
        "stop",
    )
    assert reply.usage == Usage(13, 6)
    with_tools = request([{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL])
    reply = live.parse_reply(live.complete(with_tools, "m"))
    assert reply.tool_calls == [ToolCall("call_fake1", "get_weather", '{"city": "Paris"}')]
    assert reply.finish_reason == "tool_calls"
    assert fake.chat_requests()[-1].json["tools"][0]["name"] == "get_weather"


def test_live_stream_with_tools_rebuilds_the_call(live):
    req = request([{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL], stream=True)
    events = stream_through(live, req)
    assert "".join(e.thinking for e in events) == "Let me think."
    deltas = [d for e in events for d in (e.tool_calls or [])]
    assert {d.index for d in deltas} == {0}
    assert (deltas[0].id, deltas[0].name) == ("call_fake1", "get_weather")
    assert json.loads("".join(d.arguments for d in deltas)) == {"city": "Paris"}
    assert events[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("option", "match"), [("cut_after", "broke off"), ("error_after", "the model crashed")]
)
def test_live_stream_cut_or_failing_midway(live, fake, option, match):
    fake.behave(**{option: 3})
    with pytest.raises(UpstreamError, match=match):
        stream_through(live, request([{"role": "user", "content": "hi"}], stream=True))


def test_live_models(live):
    assert live.list_models(timeout=2) == ["fake-model"]


@pytest.mark.parametrize("last", ["response.completed", "response.incomplete", "response.failed"])
def test_the_stream_ends_at_its_last_event(last):
    from chatd.adapters.responses import iter_responses_events

    lines = [b'data: {"type": "response.created"}', b'data: {"type": "%s"}' % last.encode()]
    lines.append(b'data: {"type": "never read"}')
    assert [e["type"] for e in iter_responses_events(lines)] == ["response.created", last]
