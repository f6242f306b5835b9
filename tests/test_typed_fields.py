"""Shared knobs across dialects and wire formats: what each upstream is sent.

Every client dialect (``/chat``, ``/v1``, ``/api/chat``, ``/v1/messages``) is
sent through every wire format (OpenAI, Ollama, Anthropic, Responses) and the
exact upstream body is checked: each wire gets the knobs it has names for and
never a field it would refuse (Anthropic and Responses answer 400 to unknown
fields). Each knob has its own value, so a test tells which one went where.
"""

from __future__ import annotations

import json

import pytest
import responses

from chatd.validation import build_openai_request

# One provider per wire format, each on its own unroutable host.
URLS = {
    "oai": "http://oai.test/v1",
    "oll": "http://oll.test",
    "ant": "http://ant.test/v1",
    "rsp": "http://rsp.test/v1",
}
WIRES = {"oai": "openai", "oll": "ollama", "ant": "anthropic", "rsp": "responses"}
CHAT_PATHS = {
    "oai": "/chat/completions",
    "oll": "/api/chat",
    "ant": "/messages",
    "rsp": "/responses",
}
# A minimal whole answer in each wire format.
ANSWERS = {
    "oai": {
        "choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    },
    "oll": {
        "message": {"role": "assistant", "content": "ok"},
        "done": True,
        "done_reason": "stop",
    },
    "ant": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    },
    "rsp": {
        "status": "completed",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "ok"}]}],
        "usage": {"input_tokens": 1, "output_tokens": 1},
    },
}
SCHEMA = {"type": "object", "properties": {}}
TOOL = {
    "type": "function",
    "function": {"name": "get", "description": "d", "parameters": SCHEMA},
}
HI = [{"role": "user", "content": "hi"}]
# The same user turn as each wire format writes it.
ANTHROPIC_HI = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
RESPONSES_HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client(make_app):
    providers = {
        name: {"url": url, "wire": WIRES[name], "key_env": "CORP_KEY"} for name, url in URLS.items()
    }
    return make_app(environ={"CORP_KEY": "k-1"}, providers=providers).test_client()


def sent(client, upstream, provider: str, path: str, body: dict) -> dict:
    """POST ``body`` to chatd's ``path`` for ``provider``; return what the upstream got."""
    upstream.add(responses.POST, URLS[provider] + CHAT_PATHS[provider], json=ANSWERS[provider])
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return json.loads(upstream.calls[-1].request.body)


# -- /v1 (OpenAI dialect) ----------------------------------------------------------

V1_KNOBS = {
    "reasoning_effort": "low",
    "presence_penalty": 0.25,
    "frequency_penalty": 0.5,
    "top_k": 7,
    "parallel_tool_calls": False,
    "user": "u1",
    "logit_bias": {"42": 1},
}
V1_EXPECTED = {
    "oai": {
        "model": "m",
        "messages": HI,
        "stream": False,
        "tools": [TOOL],
        **V1_KNOBS,
    },
    # user and logit_bias: OpenAI-only, not sent; the knobs where Ollama reads them.
    "oll": {
        "model": "m",
        "messages": HI,
        "stream": False,
        "tools": [TOOL],
        "think": "low",
        "options": {"presence_penalty": 0.25, "frequency_penalty": 0.5, "top_k": 7},
    },
    "ant": {
        "model": "m",
        "messages": ANTHROPIC_HI,
        "stream": False,
        "max_tokens": 8192,
        "top_k": 7,
        "tools": [{"name": "get", "description": "d", "input_schema": SCHEMA}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    },
    "rsp": {
        "model": "m",
        "input": RESPONSES_HI,
        "stream": False,
        "store": False,
        "tools": [{"type": "function", "name": "get", "description": "d", "parameters": SCHEMA}],
        "parallel_tool_calls": False,
        "reasoning": {"effort": "low"},
    },
}


@pytest.mark.parametrize("provider", list(URLS))
def test_v1_knobs_reach_each_wire_as_it_names_them(client, upstream, provider):
    body = {"model": f"{provider}/m", "messages": HI, "tools": [TOOL], **V1_KNOBS}
    got = sent(client, upstream, provider, "/v1/chat/completions", body)
    assert got == V1_EXPECTED[provider]


def test_v1_response_format_reaches_a_responses_provider_once(client, upstream):
    """Regression: it was sent as text.format and again as response_format."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    body = {"model": "rsp/m", "messages": HI, "response_format": response_format}
    got = sent(client, upstream, "rsp", "/v1/chat/completions", body)
    assert got == {
        "model": "m",
        "input": RESPONSES_HI,
        "stream": False,
        "store": False,
        "text": {"format": {"type": "json_schema", "name": "response", "schema": schema}},
    }


def test_v1_response_format_still_reaches_an_openai_provider_whole(client, upstream):
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    body = {"model": "oai/m", "messages": HI, "response_format": response_format}
    got = sent(client, upstream, "oai", "/v1/chat/completions", body)
    assert got["response_format"] == response_format


def test_v1_response_format_is_a_400_for_an_anthropic_provider(client):
    body = {"model": "ant/m", "messages": HI, "response_format": {"type": "json_object"}}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "format" in response.json["error"]["message"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("reasoning_effort", "extreme"),
        ("reasoning_effort", 3),
        ("presence_penalty", "high"),
        ("frequency_penalty", True),
        ("top_k", -1),
        ("top_k", 2.5),
        ("parallel_tool_calls", "no"),
    ],
)
def test_v1_knob_of_the_wrong_type_is_a_400_naming_it(client, field, value):
    response = client.post(
        "/v1/chat/completions", json={"model": "oai/m", "messages": HI, field: value}
    )
    assert response.status_code == 400
    assert field in response.json["error"]["message"]


def test_v1_requests_say_they_are_openai_and_keep_only_leftovers_in_options():
    request, _ = build_openai_request({"model": "m", "messages": HI, **V1_KNOBS})
    assert request.dialect == "openai"
    assert request.options == {"user": "u1", "logit_bias": {"42": 1}}
    assert (request.reasoning_effort, request.top_k, request.parallel_tool_calls) == (
        "low",
        7,
        False,
    )


# -- /api/chat (Ollama dialect) ----------------------------------------------------

OLLAMA_BODY = {
    "messages": HI,
    "stream": False,
    "think": "high",
    "keep_alive": "5m",
    "options": {"presence_penalty": 0.25, "frequency_penalty": 0.5, "top_k": 7, "num_ctx": 4096},
}
OLLAMA_EXPECTED = {
    "oai": {
        "model": "m",
        "messages": HI,
        "stream": False,
        "reasoning_effort": "high",
        "presence_penalty": 0.25,
        "frequency_penalty": 0.5,
        "top_k": 7,
    },
    # An Ollama client's own body, as it sent it.
    "oll": {"model": "m", **OLLAMA_BODY},
    "ant": {
        "model": "m",
        "messages": ANTHROPIC_HI,
        "stream": False,
        "max_tokens": 8192,
        "top_k": 7,
    },
    "rsp": {
        "model": "m",
        "input": RESPONSES_HI,
        "stream": False,
        "store": False,
        "reasoning": {"effort": "high"},
    },
}


@pytest.mark.parametrize("provider", list(URLS))
def test_ollama_knobs_reach_each_wire_as_it_names_them(client, upstream, provider):
    got = sent(client, upstream, provider, "/api/chat", {"model": f"{provider}/m", **OLLAMA_BODY})
    assert got == OLLAMA_EXPECTED[provider]


def test_ollama_think_level_is_not_sent_as_reasoning_effort_to_anthropic(client, upstream):
    """Regression: {"think": "high"} reached an Anthropic upstream as reasoning_effort."""
    body = {"model": "ant/m", "messages": HI, "stream": False, "think": "high"}
    got = sent(client, upstream, "ant", "/api/chat", body)
    assert got == {"model": "m", "messages": ANTHROPIC_HI, "stream": False, "max_tokens": 8192}


def test_ollama_knob_of_the_wrong_type_is_a_400_naming_it(client):
    body = {"model": "oai/m", "messages": HI, "options": {"top_k": "many"}}
    response = client.post("/api/chat", json=body)
    assert response.status_code == 400
    assert "options.top_k" in response.json["error"]


# -- /v1/messages (Anthropic dialect) ----------------------------------------------

ANTHROPIC_BODY = {
    "max_tokens": 100,
    "messages": HI,
    "top_k": 7,
    "tools": [{"name": "get", "description": "d", "input_schema": SCHEMA}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
}
ANTHROPIC_EXPECTED = {
    "oai": {
        "model": "m",
        "messages": HI,
        "stream": False,
        "max_tokens": 100,
        "tools": [TOOL],
        "tool_choice": "auto",
        "top_k": 7,
        "parallel_tool_calls": False,
    },
    "oll": {
        "model": "m",
        "messages": HI,
        "stream": False,
        "tools": [TOOL],
        "options": {"num_predict": 100, "top_k": 7},
    },
    # An Anthropic client's own body, only model and stream set.
    "ant": {"model": "m", **ANTHROPIC_BODY, "stream": False},
    "rsp": {
        "model": "m",
        "input": RESPONSES_HI,
        "stream": False,
        "store": False,
        "max_output_tokens": 100,
        "tools": [{"type": "function", "name": "get", "description": "d", "parameters": SCHEMA}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
    },
}


@pytest.mark.parametrize("provider", list(URLS))
def test_anthropic_knobs_reach_each_wire_as_it_names_them(client, upstream, provider):
    body = {"model": f"{provider}/m", **ANTHROPIC_BODY}
    got = sent(client, upstream, provider, "/v1/messages", body)
    assert got == ANTHROPIC_EXPECTED[provider]


def test_anthropic_top_k_is_not_sent_to_a_responses_provider(client, upstream):
    """Regression: /v1/messages top_k reached a Responses upstream, which refuses it."""
    body = {"model": "rsp/m", "max_tokens": 100, "messages": HI, "top_k": 7}
    got = sent(client, upstream, "rsp", "/v1/messages", body)
    assert got == {
        "model": "m",
        "input": RESPONSES_HI,
        "stream": False,
        "store": False,
        "max_output_tokens": 100,
    }


def test_anthropic_disable_parallel_tool_use_must_be_a_boolean(client):
    body = {**ANTHROPIC_BODY, "model": "oai/m", "tool_choice": {"type": "auto"}}
    body["tool_choice"]["disable_parallel_tool_use"] = "yes"
    response = client.post("/v1/messages", json=body)
    assert response.status_code == 400
    assert "disable_parallel_tool_use" in response.json["error"]["message"]


# -- /chat (chatd's dialect) -------------------------------------------------------


@pytest.mark.parametrize("provider", list(URLS))
def test_chat_options_are_native_extras_for_every_wire(client, upstream, provider):
    """A /chat caller chose its options for its provider: every wire gets them."""
    options = {"top_k": 3, "vendor_knob": "v"}
    body = {"model": f"{provider}/m", "messages": HI, "options": options}
    got = sent(client, upstream, provider, "/chat", body)
    where = got["options"] if provider == "oll" else got
    assert (where["top_k"], where["vendor_knob"]) == (3, "v")


@pytest.mark.parametrize("field", ["top_k", "reasoning_effort", "parallel_tool_calls"])
def test_chat_keeps_knobs_in_options_not_at_the_top_level(client, field):
    response = client.post("/chat", json={"model": "oai/m", "messages": HI, field: 1})
    assert response.status_code == 400
    assert repr(field) in response.json["error"]["message"]


# -- the Ollama wire's think levels ------------------------------------------------


@pytest.mark.parametrize(
    "effort, think",
    [("none", False), ("minimal", "low"), ("medium", "medium"), ("xhigh", "high")],
)
def test_ollama_wire_takes_the_nearest_think_level(client, upstream, effort, think):
    body = {"model": "oll/m", "messages": HI, "reasoning_effort": effort}
    assert sent(client, upstream, "oll", "/v1/chat/completions", body)["think"] == think


# -- the Anthropic wire's parallel_tool_calls --------------------------------------


@pytest.mark.parametrize(
    "tool_choice, expected",
    [
        ("required", {"type": "any", "disable_parallel_tool_use": True}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get"}},
            {"type": "tool", "name": "get", "disable_parallel_tool_use": True},
        ),
    ],
)
def test_anthropic_wire_says_no_parallel_calls_on_the_tool_choice(
    client, upstream, tool_choice, expected
):
    body = {
        "model": "ant/m",
        "messages": HI,
        "tools": [TOOL],
        "tool_choice": tool_choice,
        "parallel_tool_calls": False,
    }
    got = sent(client, upstream, "ant", "/v1/chat/completions", body)
    assert got["tool_choice"] == expected


def test_anthropic_wire_drops_parallel_tool_calls_without_tools(client, upstream):
    body = {"model": "ant/m", "messages": HI, "parallel_tool_calls": False}
    got = sent(client, upstream, "ant", "/v1/chat/completions", body)
    assert "tool_choice" not in got and "parallel_tool_calls" not in got
