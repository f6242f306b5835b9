"""The Anthropic Messages dialect: reading requests, rendering answers, streams and errors.

Rendered answers are read back with the official ``anthropic`` SDK (over an
httpx mock transport), so "Anthropic's shape" means what the SDK accepts,
not what these tests believe it to be.
"""

from __future__ import annotations

import json

import anthropic
import httpx2 as httpx  # the transport anthropic 2.x is built on
import pytest

from chatd.dialects import anthropic as dialect
from chatd.errors import BadRequest, ProviderNotFound, UpstreamError, UpstreamTimeout
from chatd.neutral import Event, Reply, ToolCall, ToolCallDelta, Usage
from tests.fakes import FakeOllama, FakeOpenAI

MODEL = "ollama/llama3.2"


def base_body(**extra) -> dict:
    return {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


def sdk_answering(status: int, content: bytes, content_type="application/json"):
    """An Anthropic SDK client whose every call gets this answer."""

    def handler(request):
        return httpx.Response(status, headers={"content-type": content_type}, content=content)

    transport = httpx.MockTransport(handler)
    return anthropic.Anthropic(
        api_key="test",
        base_url="http://chatd.test",
        max_retries=0,
        http_client=httpx.Client(transport=transport),
    )


def sdk_body(call) -> dict:
    """The body the Anthropic SDK sends for ``call(client)``."""
    sent = []

    def handler(request):
        sent.append(json.loads(request.content))
        return httpx.Response(400, json={"type": "error", "error": {"type": "x", "message": "x"}})

    client = anthropic.Anthropic(
        api_key="test",
        base_url="http://chatd.test",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    with pytest.raises(anthropic.BadRequestError):
        call(client)
    return sent[0]


def streamed(events: list[Event]):
    """What the SDK's stream helper makes of render_stream(events)."""
    raw = b"".join(dialect.render_stream(iter(events), MODEL))
    client = sdk_answering(200, raw, "text/event-stream")
    with client.messages.stream(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}]
    ) as s:
        kinds = [event.type for event in s]
        return s.get_final_message(), kinds, raw


# -- requests -----------------------------------------------------------------------


def test_a_plain_request_reads_into_the_neutral_shape():
    body = base_body(temperature=0.3, top_p=0.9, top_k=40, stop_sequences=["END"])
    request = dialect.parse_request(body)
    assert request.model == MODEL
    assert request.messages == [{"role": "user", "content": "hi"}]
    assert (request.temperature, request.top_p, request.max_tokens) == (0.3, 0.9, 64)
    assert request.stop == ["END"]
    assert (request.top_k, request.options) == (40, {})
    assert request.stream is False
    assert request.dialect == "anthropic" and request.native is body


def test_system_blocks_with_cache_control_become_one_system_turn():
    system = [
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Answer in French."},
    ]
    request = dialect.parse_request(base_body(system=system))
    assert request.messages[0] == {
        "role": "system",
        "content": "You are terse.\n\nAnswer in French.",
    }


def test_a_trailing_system_turn_is_folded_into_the_system_prompt():
    body = base_body(
        system="base",
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "unknown model note"}]},
        ],
    )
    request = dialect.parse_request(body)
    assert request.messages == [
        {"role": "system", "content": "base\n\nunknown model note"},
        {"role": "user", "content": "hi"},
    ]


def test_images_become_image_url_parts():
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.jpg"}},
    ]
    request = dialect.parse_request(base_body(messages=[{"role": "user", "content": content}]))
    assert request.messages[0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.jpg"}},
    ]


def test_a_tool_round_trip_reads_into_tool_calls_and_tool_turns():
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "sunny"}],
                },
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
    ]
    request = dialect.parse_request(base_body(messages=messages))
    assert request.messages == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": "and tomorrow?"},
    ]


def test_a_failed_tool_result_says_so_in_its_text():
    block = {"type": "tool_result", "tool_use_id": "t", "content": "no such file", "is_error": True}
    request = dialect.parse_request(base_body(messages=[{"role": "user", "content": [block]}]))
    assert request.messages == [
        {"role": "tool", "tool_call_id": "t", "content": "[tool error] no such file"}
    ]


def test_tools_and_tool_choice_map_to_openai_and_server_tools_are_dropped():
    tools = [
        {"name": "Read", "description": "read a file", "input_schema": {"type": "object"}},
        {"type": "custom", "name": "Bash", "input_schema": {"type": "object", "properties": {}}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
    ]
    request = dialect.parse_request(
        base_body(
            tools=tools,
            tool_choice={"type": "tool", "name": "Read", "disable_parallel_tool_use": True},
        )
    )
    assert request.tools == [
        {
            "type": "function",
            "function": {
                "name": "Read",
                "parameters": {"type": "object"},
                "description": "read a file",
            },
        },
        {
            "type": "function",
            "function": {"name": "Bash", "parameters": {"type": "object", "properties": {}}},
        },
    ]
    assert request.tool_choice == {"type": "function", "function": {"name": "Read"}}
    assert (request.parallel_tool_calls, request.options) == (False, {})


@pytest.mark.parametrize(
    ("choice", "expected"), [("auto", "auto"), ("any", "required"), ("none", "none")]
)
def test_tool_choice_types(choice, expected):
    body = base_body(tools=[{"name": "t", "input_schema": {}}], tool_choice={"type": choice})
    assert dialect.parse_request(body).tool_choice == expected


def test_only_server_tools_means_no_tools_and_no_tool_choice():
    body = base_body(
        tools=[{"type": "web_search_20250305", "name": "web_search"}], tool_choice={"type": "any"}
    )
    request = dialect.parse_request(body)
    assert request.tools is None and request.tool_choice is None


def test_what_claude_code_sends_beside_the_chat_is_accepted_and_kept_native():
    body = base_body(
        stream=True,
        thinking={"type": "enabled", "budget_tokens": 2048},
        metadata={"user_id": "u"},
        context_management={"edits": []},
        output_config={"effort": "high"},
        service_tier="auto",
    )
    request = dialect.parse_request(body)
    assert request.stream is True
    # Not forwarded to other wires: Ollama answers 400 to `think` on a model without it.
    assert request.options == {}
    assert request.native["thinking"] == {"type": "enabled", "budget_tokens": 2048}


def test_a_request_the_sdk_builds_parses():
    body = sdk_body(
        lambda c: c.messages.create(
            model=MODEL,
            max_tokens=32,
            system=[{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
            tools=[{"name": "Read", "input_schema": {"type": "object"}}],
            tool_choice={"type": "auto"},
            thinking={"type": "enabled", "budget_tokens": 1024},
        )
    )
    request = dialect.parse_request(body)
    assert request.messages == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hello"},
    ]
    assert request.tool_choice == "auto"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"max_tokens": None}, "max_tokens is required"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b"}]}
                ]
            },
            "tool_use",
        ),
        ({"messages": [{"role": "system", "content": "only"}]}, "messages must hold"),
        ({"system": 5}, "system"),
        ({"system": [{"type": "image"}]}, "system[0]"),
        ({"stream": "yes"}, "stream"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": 1.5}, "top_k"),
        ({"tools": {"name": "x"}}, "tools"),
        ({"tools": [{"name": "x"}]}, "tools[0].input_schema"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"thinking": True}, "thinking"),
    ],
)
def test_malformed_requests_name_the_field(change, named):
    body = {key: value for key, value in {**base_body(), **change}.items() if value is not None}
    with pytest.raises(BadRequest) as caught:
        dialect.parse_request(body)
    assert named in caught.value.message


def test_a_body_that_is_not_an_object_is_refused():
    with pytest.raises(BadRequest, match="JSON object"):
        dialect.parse_request(["model"])


def test_count_tokens_is_json_bytes_over_four_rounded_up():
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 100}], "max_tokens": 1}
    counted = json.dumps({"messages": body["messages"]}, separators=(",", ":"))
    assert dialect.count_tokens(body) == -(-len(counted) // 4)
    bigger = {**body, "system": "s" * 400}
    assert dialect.count_tokens(bigger) >= dialect.count_tokens(body) + 100


# -- whole answers --------------------------------------------------------------------


def test_a_reply_renders_as_a_message_the_sdk_reads():
    reply = Reply(
        content="Let me look.",
        thinking="The user wants a file.",
        tool_calls=[ToolCall(id="call_1", name="Read", arguments='{"path": "a.txt"}')],
        finish_reason="tool_calls",
        usage=Usage(prompt_tokens=12, completion_tokens=7),
    )
    body = dialect.render_reply(reply, MODEL)
    message = sdk_answering(200, json.dumps(body).encode()).messages.create(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}]
    )
    assert message.id.startswith("msg_") and message.model == MODEL
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[0].thinking == "The user wants a file."
    assert message.content[1].text == "Let me look."
    assert (message.content[2].id, message.content[2].name) == ("call_1", "Read")
    assert message.content[2].input == {"path": "a.txt"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 7)


@pytest.mark.parametrize(
    ("finish", "calls", "expected"),
    [
        ("stop", False, "end_turn"),
        (None, False, "end_turn"),
        ("length", False, "max_tokens"),
        ("content_filter", False, "refusal"),
        ("stop", True, "tool_use"),  # Ollama says stop when it called tools
        ("tool_calls", True, "tool_use"),
        ("length", True, "max_tokens"),
    ],
)
def test_stop_reasons(finish, calls, expected):
    tool_calls = [ToolCall(id="c", name="t", arguments="{}")] if calls else []
    reply = Reply(content="x", finish_reason=finish, tool_calls=tool_calls)
    assert dialect.render_reply(reply, MODEL)["stop_reason"] == expected


def test_tool_arguments_that_are_not_a_json_object_are_handed_on_as_text():
    reply = Reply(
        tool_calls=[
            ToolCall(id="c", name="t", arguments="{broken"),
            ToolCall(id="d", name="u", arguments=""),
        ]
    )
    content = dialect.render_reply(reply, MODEL)["content"]
    assert [block["input"] for block in content] == [{"arguments": "{broken"}, {}]


# -- streams ----------------------------------------------------------------------------


def test_a_text_stream_is_anthropics_event_sequence():
    events = [
        Event(content="Hel"),
        Event(content="lo"),
        Event(finish_reason="stop"),
        Event(usage=Usage(9, 2)),
    ]
    message, kinds, raw = streamed(events)
    assert message.content[0].text == "Hello"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 2)
    names = [
        line[len(b"event: ") :].decode() for line in raw.split(b"\n") if line.startswith(b"event: ")
    ]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    # Each event's data names the same type as its event line.
    datas = [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert [d["type"] for d in datas] == names
    assert "text" in kinds


def test_thinking_text_and_tool_calls_open_and_close_blocks_in_order():
    events = [
        Event(thinking="Think"),
        Event(thinking="ing."),
        Event(content="I'll read it."),
        Event(tool_calls=[ToolCallDelta(index=0, id="call_a", name="Read", arguments="")]),
        Event(tool_calls=[ToolCallDelta(index=0, arguments='{"path":')]),
        Event(tool_calls=[ToolCallDelta(index=0, arguments='"a.txt"}')]),
        Event(
            tool_calls=[
                ToolCallDelta(index=1, id="call_b", name="Bash", arguments='{"command":"ls"}')
            ]
        ),
        Event(finish_reason="tool_calls", usage=Usage(30, 12)),
    ]
    message, _, raw = streamed(events)
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert message.content[0].thinking == "Thinking."
    assert message.content[1].text == "I'll read it."
    assert (message.content[2].id, message.content[2].name, message.content[2].input) == (
        "call_a",
        "Read",
        {"path": "a.txt"},
    )
    assert (message.content[3].name, message.content[3].input) == ("Bash", {"command": "ls"})
    assert message.stop_reason == "tool_use"
    starts = [json.loads(line[6:]) for line in raw.split(b"\n") if b'"content_block_start"' in line]
    stops = [json.loads(line[6:]) for line in raw.split(b"\n") if b'"content_block_stop"' in line]
    assert [s["index"] for s in starts] == [0, 1, 2, 3] == [s["index"] for s in stops]


def test_whole_tool_calls_as_ollama_streams_them_end_in_tool_use():
    events = [
        Event(tool_calls=[ToolCallDelta(index=0, id="c1", name="Read", arguments='{"path":"x"}')]),
        Event(finish_reason="stop", usage=Usage(5, 1)),
    ]
    message, _, _ = streamed(events)
    assert message.content[0].input == {"path": "x"} and message.stop_reason == "tool_use"


def test_an_empty_stream_is_one_empty_text_block():
    message, _, _ = streamed([Event(finish_reason="length")])
    assert [(b.type, b.text) for b in message.content] == [("text", "")]
    assert message.stop_reason == "max_tokens"


def test_a_stream_failure_propagates_for_the_caller_to_render():
    def failing():
        yield Event(content="partial")
        raise UpstreamError("the model crashed")

    rendered = dialect.render_stream(failing(), MODEL)
    with pytest.raises(UpstreamError):
        list(rendered)


def test_the_in_band_error_is_an_error_event_the_sdk_raises():
    raw = b"".join(dialect.render_stream(iter([Event(content="part")]), MODEL)).split(
        b"event: content_block_stop"
    )[0]
    body = UpstreamError("the model crashed", provider="ollama").to_dict()
    body["error"]["request_id"] = "req-1"  # as chatd.streaming.cut hands it over
    raw += dialect.render_stream_error(body)
    client = sdk_answering(200, raw, "text/event-stream")
    with pytest.raises(anthropic.APIStatusError) as caught:  # noqa: PT012
        with client.messages.stream(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        ) as s:
            s.get_final_message()
    assert caught.value.body["error"]["type"] == "api_error"
    assert "the model crashed" in caught.value.body["error"]["message"]
    assert b"message_stop" not in raw


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "kind", "sdk_error"),
    [
        (
            BadRequest("max_tokens is required"),
            400,
            "invalid_request_error",
            anthropic.BadRequestError,
        ),
        (ProviderNotFound("no provider x"), 404, "not_found_error", anthropic.NotFoundError),
        (UpstreamError("bad gateway"), 502, "api_error", anthropic.InternalServerError),
        (UpstreamTimeout("slow"), 504, "api_error", anthropic.InternalServerError),
    ],
)
def test_errors_render_in_anthropics_envelope(error, status, kind, sdk_error):
    # What chatd.errors renders under /v1/messages for a ChatdError.
    body = dialect.error_body(error.status_code, error.message, "req-9", **error.details)
    assert body["type"] == "error" and body["request_id"] == "req-9"
    assert (body["error"]["type"], body["error"]["message"]) == (kind, error.message)
    client = sdk_answering(status, json.dumps(body).encode())
    with pytest.raises(sdk_error) as caught:
        client.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["error"]["type"] == kind


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, "authentication_error"),
        (403, "permission_error"),
        (405, "invalid_request_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "overloaded_error"),
    ],
)
def test_error_types_by_status(status, kind):
    assert dialect.error_type(status) == kind


# -- the routes, through the Flask client ------------------------------------------------


def test_a_missing_max_tokens_is_a_400_in_anthropics_envelope(client):
    body = base_body()
    del body["max_tokens"]
    response = client.post("/v1/messages?beta=true", json=body)
    assert response.status_code == 400
    error = response.get_json()
    assert error["type"] == "error" and error["request_id"] == response.headers["X-Request-ID"]
    assert error["error"] == {"type": "invalid_request_error", "message": "max_tokens is required"}


def test_an_unregistered_provider_is_a_404_not_found_error(make_app):
    response = (
        make_app(environ={}).test_client().post("/v1/messages", json=base_body(model="kimi/k2"))
    )
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error["type"] == "not_found_error" and "KIMI_API_KEY" in error["message"]


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("get", "/v1/messages", 405, "invalid_request_error"),
        ("post", "/v1/messages/batches", 404, "not_found_error"),
    ],
)
def test_werkzeug_errors_under_v1_messages_use_anthropics_envelope(
    client, method, path, status, kind
):
    response = getattr(client, method)(path)
    assert response.status_code == status
    assert response.get_json()["error"]["type"] == kind


def test_other_routes_keep_chatds_envelope(client):
    response = client.post("/v1/messagesx", json={})
    assert response.status_code == 404
    assert response.get_json()["error"]["type"] == "not_found"
    response = client.post("/chat", json={})
    assert response.get_json()["error"]["code"] == "invalid_request"


def test_too_large_a_body_is_413_request_too_large(make_app):
    client = make_app(max_request_bytes=1024).test_client()
    response = client.post("/v1/messages", json=base_body(system="x" * 2000))
    assert response.status_code == 413
    assert response.get_json()["error"]["type"] == "request_too_large"


def test_invalid_json_is_a_400_in_anthropics_envelope(client):
    response = client.post("/v1/messages", data=b"{nope", content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["type"] == "invalid_request_error"


def test_count_tokens_answers_an_estimate(client):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "y" * 400}]}
    response = client.post("/v1/messages/count_tokens", json=body)
    assert response.status_code == 200
    assert response.get_json() == {"input_tokens": dialect.count_tokens(body)}
    assert response.get_json()["input_tokens"] > 100
    bad = client.post("/v1/messages/count_tokens", json={"model": MODEL})
    assert bad.status_code == 400 and "messages" in bad.get_json()["error"]["message"]


@pytest.mark.parametrize("method", ["head", "get"])
def test_the_root_answers_claude_codes_warm_up(client, method):
    assert getattr(client, method)("/").status_code == 200


TOKEN = "anthropic-dialect-token-5e1"


@pytest.fixture
def guarded(make_app, environ):
    from chatd.config import AuthSettings

    environ = {**environ, "CHATD_TEST_TOKENS": TOKEN}
    return make_app(environ=environ, auth=AuthSettings(token_env="CHATD_TEST_TOKENS")).test_client()


@pytest.mark.parametrize(
    "headers",
    [{"x-api-key": TOKEN}, {"Authorization": f"Bearer {TOKEN}"}, {"X-Api-Key": f" {TOKEN} "}],
)
def test_x_api_key_is_accepted_as_well_as_bearer(guarded, headers):
    # count_tokens touches no upstream: a 200 says the token was let through.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    assert guarded.post("/v1/messages/count_tokens", json=body, headers=headers).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": "wrong"},
        {"x-api-key": ""},
        {"Authorization": f"Basic {TOKEN}"},
        # A Bearer header that is wrong is not rescued by a right x-api-key.
        {"Authorization": "Bearer wrong", "x-api-key": TOKEN},
    ],
)
def test_without_a_valid_token_it_is_401_authentication_error(guarded, headers):
    response = guarded.post("/v1/messages", json=base_body(), headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["type"] == "authentication_error"
    assert TOKEN not in response.get_data(as_text=True)
    assert "x-api-key" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("method", ["head", "get"])
def test_the_root_needs_no_token_as_claude_codes_warm_up_sends_none(guarded, method):
    assert getattr(guarded, method)("/").status_code == 200


# -- live: chatd under gunicorn, driven by the anthropic SDK --------------------------------


class Scripted:
    """A fake that answers a first turn with ``first`` and a turn that follows a tool
    result with ``after_tool``; each a dict of text, thinking and tool (name, input)."""

    first: dict | None = None
    after_tool: dict | None = None

    def turn(self, body: dict) -> dict | None:
        if self.first is None:
            return None
        return self.after_tool if body["messages"][-1]["role"] == "tool" else self.first


class ScriptedOpenAI(Scripted, FakeOpenAI):
    def chat_answer(self, body):
        turn = self.turn(body)
        answer = super().chat_answer(body)
        if turn is not None:
            message = {"role": "assistant", "content": turn.get("text", "")}
            if turn.get("thinking"):
                message["reasoning"] = turn["thinking"]
            if turn.get("tool"):
                name, arguments = turn["tool"]
                message["tool_calls"] = [
                    {
                        "id": "call_7",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(arguments)},
                    }
                ]
                answer["choices"][0]["finish_reason"] = "tool_calls"
            answer["choices"][0]["message"] = message
        return answer

    def stream_events(self, body, pieces):
        turn = self.turn(body)
        if turn is None:
            return super().stream_events(body, pieces)

        def chunk(delta, finish=None, **extra):
            data = {"id": "c", "object": "chat.completion.chunk", "model": body["model"], **extra}
            data["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        events = [chunk({"role": "assistant"})]
        if turn.get("thinking"):
            events.append(chunk({"reasoning": turn["thinking"]}))
        if turn.get("text"):
            events += [chunk({"content": piece}) for piece in (turn["text"][:3], turn["text"][3:])]
        finish = "stop"
        if turn.get("tool"):
            name, arguments = turn["tool"]
            text = json.dumps(arguments)
            start = {
                "index": 0,
                "id": "call_7",
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            events.append(chunk({"tool_calls": [start]}))
            for piece in (text[:5], text[5:]):
                events.append(
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                )
            finish = "tool_calls"
        events.append(chunk({}, finish))
        usage = {"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25}
        events.append(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        return [*events, b"data: [DONE]\n\n"]


class ScriptedOllama(Scripted, FakeOllama):
    def _message(self, turn: dict) -> dict:
        message = {"role": "assistant", "content": turn.get("text", "")}
        if turn.get("thinking"):
            message["thinking"] = turn["thinking"]
        if turn.get("tool"):
            name, arguments = turn["tool"]
            message["tool_calls"] = [{"function": {"name": name, "arguments": arguments}}]
        return message

    def chat_answer(self, body):
        turn = self.turn(body)
        answer = super().chat_answer(body)
        if turn is not None:
            answer["message"] = self._message(turn)
        return answer

    def stream_events(self, body, pieces):
        turn = self.turn(body)
        events = super().stream_events(body, pieces)
        if turn is None:
            return events
        line = json.loads(events[0])
        line["message"] = self._message(turn)
        return [json.dumps(line).encode() + b"\n", events[-1]]


LIVE_MODELS = {"ollama": "llama3.2", "openai": "openrouter/acme/coder-1"}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from tests.conftest import TEST_KEYS
    from tests.live import clean_env, run_chatd, write_config

    with (
        ScriptedOllama("from local ollama") as ollama,
        ScriptedOpenAI("from openrouter") as openrouter,
    ):
        config = write_config(
            tmp_path_factory.mktemp("anthropic") / "chatd.toml",
            timeout_secs=5.0,
            threads=8,
            ollama_url=ollama.url,
            openrouter_url=openrouter.url + "/api/v1",
        )
        keys = {"OPENROUTER_API_KEY": TEST_KEYS["OPENROUTER_API_KEY"]}  # kimi stays unregistered
        with run_chatd(config, clean_env(**keys)) as chatd:
            chatd.fakes = {"ollama": ollama, "openai": openrouter}
            yield chatd


@pytest.fixture(params=sorted(LIVE_MODELS))
def wire(request, live):
    """Each live test runs against an Ollama-wire and an OpenAI-wire provider."""
    fake = live.fakes[request.param]
    fake.behave()
    fake.first = fake.after_tool = None
    yield request.param, LIVE_MODELS[request.param], fake
    fake.behave()
    fake.first = fake.after_tool = None


def sdk(live) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="unused", base_url=live.url, max_retries=0, timeout=10)


def ask(client, model, messages=None, **extra):
    messages = messages or [{"role": "user", "content": "hi"}]
    return client.messages.create(model=model, max_tokens=100, messages=messages, **extra)


def ask_streamed(client, model, messages=None, **extra):
    messages = messages or [{"role": "user", "content": "hi"}]
    with client.messages.stream(model=model, max_tokens=100, messages=messages, **extra) as stream:
        return stream.get_final_message()


READ_TOOL = {
    "name": "Read",
    "description": "Read a file",
    "input_schema": {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    },
}


def test_live_create_answers_with_the_upstreams_text(live, wire):
    name, model, fake = wire
    message = ask(sdk(live), model)
    assert message.content[0].text == fake.reply
    assert message.model == model and message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0


def test_live_stream_answers_in_anthropics_events(live, wire):
    name, model, fake = wire
    message = ask_streamed(sdk(live), model)
    assert message.content[0].text == "Hello there"
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0


@pytest.mark.parametrize("call", [ask, ask_streamed])
def test_live_tool_round_trip(live, wire, call):
    name, model, fake = wire
    fake.first = {"text": "", "tool": ("Read", {"path": "notes.txt"})}
    fake.after_tool = {"text": "The notes say hello."}
    client = sdk(live)
    messages = [{"role": "user", "content": "what do my notes say?"}]
    first = call(client, model, messages, tools=[READ_TOOL])
    assert first.stop_reason == "tool_use"
    tool_use = [block for block in first.content if block.type == "tool_use"][0]
    assert (tool_use.name, tool_use.input) == ("Read", {"path": "notes.txt"})
    messages += [
        {
            "role": "assistant",
            "content": [block.model_dump(exclude_none=True) for block in first.content],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "hello"}],
        },
    ]
    second = call(client, model, messages, tools=[READ_TOOL])
    assert second.content[-1].text == "The notes say hello." and second.stop_reason == "end_turn"
    sent = fake.chat_requests()[-1].json
    assert sent["tools"][0]["function"]["name"] == "Read"
    assert sent["messages"][-1]["role"] == "tool" and sent["messages"][-1]["content"] == "hello"


def test_live_thinking_comes_back_as_a_thinking_block(live, wire):
    name, model, fake = wire
    fake.first = {"thinking": "Weighing it up.", "text": "Forty-two."}
    message = ask_streamed(sdk(live), model, thinking={"type": "enabled", "budget_tokens": 1024})
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert (
        message.content[0].thinking == "Weighing it up." and message.content[1].text == "Forty-two."
    )


def test_live_a_cut_stream_ends_in_an_error_event(live, wire):
    name, model, fake = wire
    fake.behave(error_after=1)
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask_streamed(sdk(live), model)
    assert "the model crashed" in caught.value.body["error"]["message"]


def test_live_an_unregistered_provider_is_not_found(live):
    with pytest.raises(anthropic.NotFoundError) as caught:
        ask(sdk(live), "kimi/kimi-k2")
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "KIMI_API_KEY" in caught.value.body["error"]["message"]


def test_live_a_missing_max_tokens_is_a_400(live):
    import requests

    response = requests.post(
        live.url + "/v1/messages", json={"model": "llama3.2", "messages": []}, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens is required",
    }


def test_thinking_is_not_sent_to_ollama_or_openai_wire_providers(client, upstream):
    """Claude Code sends `thinking` on every turn; Ollama answers 400 for a model that
    cannot think, so it goes only to a provider that speaks Anthropic."""
    import json as json_module

    upstream.post(
        "http://ollama.test/api/chat",
        json={
            "message": {"role": "assistant", "content": "hi"},
            "done": True,
            "done_reason": "stop",
        },
    )
    upstream.post(
        "http://kimi.test/coding/v1/chat/completions",
        json={"choices": [{"message": {"role": "assistant", "content": "hi"}}]},
    )
    for model in ("llama3.2", "kimi/k2"):
        response = client.post(
            "/v1/messages",
            json={
                "model": model,
                "max_tokens": 100,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert response.status_code == 200, response.json
        sent = json_module.loads(upstream.calls[-1].request.body)
        assert "thinking" not in sent and "think" not in sent
        assert "reasoning_effort" not in sent and "thinking" not in sent.get("options", {})
