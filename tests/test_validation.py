"""build_chat_request and build_openai_request: every rejection names its field."""

from __future__ import annotations

import pytest

from chatd.errors import BadRequest
from chatd.validation import build_chat_request, build_openai_request, parse_json

MESSAGES = [{"role": "user", "content": "hi"}]


def test_a_minimal_request():
    request = build_chat_request({"model": "llama3.2", "messages": MESSAGES})
    assert (request.model, request.messages, request.stream) == ("llama3.2", MESSAGES, False)
    assert request.options == {} and request.stop is None


def test_every_optional_field():
    request = build_chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "content": "42"},
            ],
            "temperature": 0.2,
            "top_p": 1,
            "max_tokens": 5,
            "stop": "\n",
            "seed": -3,
            "format": {"type": "object"},
            "options": {"num_ctx": 8192},
            "tools": [{"type": "function"}],
            "tool_choice": "auto",
            "stream": True,
            "fallbacks": ["kimi/k"],
        }
    )
    assert request.stop == ["\n"]
    assert request.format == {"type": "object"}
    assert request.options == {"num_ctx": 8192}
    assert request.fallbacks == ["kimi/k"]


@pytest.mark.parametrize(
    "body, field",
    [
        ([], "body"),
        ("text", "body"),
        ({"messages": MESSAGES}, "model"),
        ({"model": "", "messages": MESSAGES}, "model"),
        ({"model": "   ", "messages": MESSAGES}, "model"),
        ({"model": 5, "messages": MESSAGES}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": [5]}]}, "messages[0].content[0]"),
        ({"model": "m", "messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"model": "m", "messages": MESSAGES, "temperature": True}, "temperature"),
        ({"model": "m", "messages": MESSAGES, "temperature": -1}, "temperature"),
        ({"model": "m", "messages": MESSAGES, "top_p": []}, "top_p"),
        ({"model": "m", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": MESSAGES, "max_tokens": -1}, "max_tokens"),
        ({"model": "m", "messages": MESSAGES, "max_tokens": 1.5}, "max_tokens"),
        ({"model": "m", "messages": MESSAGES, "max_tokens": True}, "max_tokens"),
        ({"model": "m", "messages": MESSAGES, "stop": ["a", 1]}, "stop"),
        ({"model": "m", "messages": MESSAGES, "seed": 1.5}, "seed"),
        ({"model": "m", "messages": MESSAGES, "format": "yaml"}, "format"),
        ({"model": "m", "messages": MESSAGES, "options": []}, "options"),
        ({"model": "m", "messages": MESSAGES, "tools": {}}, "tools"),
        ({"model": "m", "messages": MESSAGES, "tool_choice": 1}, "tool_choice"),
        ({"model": "m", "messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"model": "m", "messages": MESSAGES, "fallbacks": "kimi/k"}, "fallbacks"),
        ({"model": "m", "messages": MESSAGES, "fallbacks": ["x"] * 9}, "fallbacks"),
        ({"model": "m", "messages": MESSAGES, "top_k": 40}, "top_k"),
        ({"model": "m", "messages": MESSAGES, "request_id": "x"}, "request_id"),
    ],
)
def test_rejections_name_the_field(body, field):
    with pytest.raises(BadRequest) as raised:
        build_chat_request(body)
    assert field in str(raised.value)


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b'{"a": NaN}'])
def test_undecodable_bodies_are_bad_requests(data):
    with pytest.raises(BadRequest) as raised:
        parse_json(data)
    assert "JSON" in str(raised.value) or "empty" in str(raised.value)


def test_openai_request_maps_its_own_names():
    request, include_usage = build_openai_request(
        {
            "model": "ollama/llama3.2",
            "messages": [{"role": "developer", "content": "be brief"}, *MESSAGES],
            "max_completion_tokens": 9,
            "response_format": {"type": "json_object"},
            "stream_options": {"include_usage": True},
            "presence_penalty": 0.5,
            "user": "u1",
        }
    )
    assert request.max_tokens == 9
    assert request.format == "json"
    assert include_usage is True
    assert request.dialect == "openai"
    # A shared knob is typed; fields chatd has no name for travel in options,
    # response_format too (for OpenAI upstreams).
    assert request.presence_penalty == 0.5
    assert request.options == {"user": "u1", "response_format": {"type": "json_object"}}


@pytest.mark.parametrize(
    "response_format, expected",
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, "json"),
        (
            {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
            {"type": "object"},
        ),
    ],
)
def test_response_format_becomes_format(response_format, expected):
    request, _ = build_openai_request(
        {"model": "m", "messages": MESSAGES, "response_format": response_format}
    )
    assert request.format == expected


@pytest.mark.parametrize(
    "body, field",
    [
        ({"model": "m", "messages": MESSAGES, "response_format": "json"}, "response_format"),
        (
            {"model": "m", "messages": MESSAGES, "response_format": {"type": "xml"}},
            "response_format",
        ),
        ({"model": "m", "messages": MESSAGES, "stream_options": 1}, "stream_options"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "role"),
    ],
)
def test_openai_rejections_name_the_field(body, field):
    with pytest.raises(BadRequest) as raised:
        build_openai_request(body)
    assert field in str(raised.value)


@pytest.mark.parametrize("build", [build_chat_request, build_openai_request])
@pytest.mark.parametrize(
    "typo, meant", [("temprature", "temperature"), ("max_token", "max_tokens")]
)
def test_a_typo_is_refused_on_chat_and_v1_with_the_closest_field(build, typo, meant):
    with pytest.raises(BadRequest, match=f"unknown field '{typo}'; did you mean '{meant}'"):
        build({"model": "m", "messages": MESSAGES, typo: 1})


def test_an_unknown_field_far_from_any_points_at_options_on_chat():
    with pytest.raises(BadRequest, match="go in 'options'"):
        build_chat_request({"model": "m", "messages": MESSAGES, "num_ctx": 1})


def test_v1_still_passes_on_provider_native_fields_near_known_ones():
    # top_k is one letter from top_p, and OpenRouter's own parameter.
    request, _ = build_openai_request({"model": "m", "messages": MESSAGES, "top_k": 5})
    assert (request.top_k, request.options) == (5, {})
