"""Ollama's API on chatd: the dialect as pure functions, then /api/* through the Flask client."""

from __future__ import annotations

import json

import ollama
import pytest
import requests

from chatd.dialects import ollama as dialect
from chatd.errors import BadRequest, UpstreamError
from chatd.neutral import Event, Reply, ToolCall, ToolCallDelta, Usage
from tests.fakes import FakeOllama, FakeOpenAI
from tests.live import clean_env, free_port, run_chatd, write_config

PNG = "iVBORw0KGgoAAAANSUhEUg"
JPEG = "/9j/4AAQSkZJRg"


# -- reading requests -------------------------------------------------------------


def test_chat_streams_unless_told_not_to():
    assert dialect.parse_chat({"model": "m", "messages": []}).stream is True
    assert dialect.parse_chat({"model": "m", "messages": [], "stream": False}).stream is False


def test_chat_request_is_marked_ollama_and_keeps_the_body():
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    request = dialect.parse_chat(body)
    assert (request.dialect, request.native) == ("ollama", body)
    assert request.messages == [{"role": "user", "content": "hi"}]


def test_options_map_to_chatd_fields_and_portable_rest():
    body = {
        "model": "m",
        "messages": [],
        "options": {
            "temperature": 0.3,
            "top_p": 0.7,
            "num_predict": 42,
            "stop": ["END"],
            "seed": 9,
            "num_ctx": 8192,
            "top_k": 11,
            "presence_penalty": 0.5,
        },
    }
    request = dialect.parse_chat(body)
    assert (request.temperature, request.top_p, request.max_tokens) == (0.3, 0.7, 42)
    assert (request.stop, request.seed) == (["END"], 9)
    # Ollama-only knobs never reach another wire; shared ones are typed for every wire.
    assert request.options == {}
    assert (request.presence_penalty, request.top_k) == (0.5, 11)
    assert request.frequency_penalty is None


@pytest.mark.parametrize("predict", [-1, -2, 0])
def test_unlimited_num_predict_sets_no_max_tokens(predict):
    body = {"model": "m", "messages": [], "options": {"num_predict": predict}}
    assert dialect.parse_chat(body).max_tokens is None


def test_generate_keeps_ollamas_knobs_in_a_chat_shaped_native_body():
    body = {
        "model": "m",
        "prompt": "x",
        "system": "be brief",
        "images": [PNG],
        "options": {"num_ctx": 8192, "temperature": 0.2, "num_predict": 5},
        "keep_alive": "10m",
        "think": True,
        "context": [1, 2],
    }
    request = dialect.parse_generate(body)
    # What an Ollama-wire provider is sent: /api/chat's shape, the knobs where they were.
    assert request.native == {
        "model": "m",
        "options": {"num_ctx": 8192, "temperature": 0.2, "num_predict": 5},
        "keep_alive": "10m",
        "think": True,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "x", "images": [PNG]},
        ],
    }
    # What any other wire is sent: chatd's fields, no Ollama-only knob.
    assert (request.temperature, request.max_tokens, request.options) == (0.2, 5, {})
    assert request.dialect == "ollama"


@pytest.mark.parametrize(
    "think, effort", [("low", "low"), ("high", "high"), ("max", "high"), (True, None)]
)
def test_think_levels_become_reasoning_effort(think, effort):
    request = dialect.parse_chat({"model": "m", "messages": [], "think": think})
    assert request.reasoning_effort == effort


def test_images_become_data_url_parts_with_their_type():
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "what is this?", "images": [PNG, JPEG]}],
    }
    content = dialect.parse_chat(body).messages[0]["content"]
    assert content[0] == {"type": "text", "text": "what is this?"}
    assert content[1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"
    assert content[2]["image_url"]["url"] == f"data:image/jpeg;base64,{JPEG}"


def test_tool_calls_get_ids_and_tool_results_find_their_call_by_name():
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "weather and time?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Oslo"}}},
                    {"function": {"name": "clock", "arguments": {}}},
                ],
            },
            {"role": "tool", "content": "12:00", "tool_name": "clock"},
            {"role": "tool", "content": "rain", "tool_name": "weather"},
        ],
    }
    messages = dialect.parse_chat(body).messages
    calls = messages[1]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["weather", "clock"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    assert calls[0]["id"] != calls[1]["id"]
    assert messages[2]["tool_call_id"] == calls[1]["id"]
    assert messages[3]["tool_call_id"] == calls[0]["id"]


def test_generate_turns_system_and_prompt_into_two_turns():
    body = {"model": "m", "prompt": "why?", "system": "be brief", "images": [PNG]}
    messages = dialect.parse_generate(body).messages
    assert messages[0] == {"role": "system", "content": "be brief"}
    assert messages[1]["role"] == "user"
    assert messages[1]["content"][0] == {"type": "text", "text": "why?"}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"messages": []}, "model"),
        ({"model": "m", "messages": [], "stream": "yes"}, "stream"),
        ({"model": "m", "messages": [{"role": "robot", "content": ""}]}, "role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "content"),
        ({"model": "m", "messages": [], "options": {"num_predict": "many"}}, "num_predict"),
        ({"model": "m", "messages": [], "options": {"temperature": -1}}, "temperature"),
        ({"model": "m", "messages": [], "format": "yaml"}, "format"),
        ({"model": "m", "messages": [], "think": "lots"}, "think"),
        ({"model": "m", "messages": [], "tools": "all"}, "tools"),
    ],
)
def test_bad_chat_requests_name_the_field(body, field):
    with pytest.raises(BadRequest, match=field):
        dialect.parse_chat(body)


@pytest.mark.parametrize("field", ["suffix", "raw", "template"])
def test_generate_refuses_what_a_chat_api_cannot_do(field):
    with pytest.raises(BadRequest, match=field):
        dialect.parse_generate(
            {"model": "m", "prompt": "x", field: "x" if field != "raw" else True}
        )


# -- rendering answers --------------------------------------------------------------


def test_reply_renders_as_ollamas_last_line():
    reply = Reply(
        content="hi",
        thinking="hmm",
        tool_calls=[ToolCall("call_1", "weather", '{"city": "Oslo"}')],
        finish_reason="tool_calls",
        usage=Usage(7, 3),
    )
    body = dialect.render_reply(reply, "kimi/k2", generate=False, started=0.0)
    assert body["model"] == "kimi/k2"
    assert body["message"]["content"] == "hi"
    assert body["message"]["thinking"] == "hmm"
    call = body["message"]["tool_calls"][0]
    assert call["function"] == {"index": 0, "name": "weather", "arguments": {"city": "Oslo"}}
    assert (body["done"], body["done_reason"]) == (True, "stop")
    assert (body["prompt_eval_count"], body["eval_count"]) == (7, 3)
    assert body["total_duration"] > 0 and body["eval_duration"] == 0


def test_an_ollama_upstreams_durations_are_passed_on():
    raw = {"total_duration": 111, "load_duration": 22, "eval_duration": 33}
    reply = Reply(content="x", finish_reason="length", usage=Usage(1, 2), raw=raw)
    body = dialect.render_reply(reply, "m", generate=True, started=0.0)
    assert body["response"] == "x" and "message" not in body
    assert (body["total_duration"], body["load_duration"], body["eval_duration"]) == (111, 22, 33)
    assert body["done_reason"] == "length"


def test_broken_tool_arguments_are_kept_as_text():
    body = dialect.render_reply(
        Reply(tool_calls=[ToolCall("c", "f", "{not json")]), "m", generate=False, started=0.0
    )
    assert body["message"]["tool_calls"][0]["function"]["arguments"] == {"arguments": "{not json"}


def lines(stream) -> list[dict]:
    out = []
    for raw in stream:
        assert raw.endswith(b"\n") and raw.count(b"\n") == 1  # one object per line, no blanks
        out.append(json.loads(raw))
    return out


def test_stream_renders_pieces_whole_tool_calls_then_done():
    events = [
        Event(thinking="let me see"),
        Event(content="Hel"),
        Event(content="lo"),
        Event(tool_calls=[ToolCallDelta(0, "call_a", "weather", '{"ci')]),
        Event(tool_calls=[ToolCallDelta(0, arguments='ty": "Oslo"}')]),
        Event(finish_reason="tool_calls"),
        Event(usage=Usage(5, 4)),
    ]
    out = lines(dialect.render_stream(iter(events), "m", generate=False, started=0.0))
    assert [line["message"].get("thinking") for line in out[:1]] == ["let me see"]
    assert [line["message"]["content"] for line in out[1:3]] == ["Hel", "lo"]
    assert all(line["message"]["role"] == "assistant" for line in out)
    call = out[3]["message"]["tool_calls"][0]
    assert call["id"] == "call_a"
    assert call["function"]["arguments"] == {"city": "Oslo"}
    assert [line["done"] for line in out] == [False, False, False, False, True]
    assert out[-1]["done_reason"] == "stop"
    assert (out[-1]["prompt_eval_count"], out[-1]["eval_count"]) == (5, 4)


def test_generate_stream_says_response():
    events = [Event(content="a"), Event(content="b", finish_reason="length")]
    out = lines(dialect.render_stream(iter(events), "m", generate=True, started=0.0))
    assert [line["response"] for line in out] == ["a", "b", ""]
    assert out[-1]["done_reason"] == "length"


def test_a_cut_streams_last_line_is_the_message_alone():
    body = UpstreamError("kimi answered 500: boom").to_dict()
    body["error"]["request_id"] = "r1"
    assert lines([dialect.render_stream_error(body)]) == [{"error": "kimi answered 500: boom"}]


# -- /api/* through the Flask client -------------------------------------------------

OLLAMA_CHAT = "http://ollama.test/api/chat"
KIMI_CHAT = "http://kimi.test/coding/v1/chat/completions"
OPENAI_ANSWER = {
    "id": "x",
    "object": "chat.completion",
    "created": 1,
    "model": "k2",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
}


def test_api_chat_reaches_an_openai_wire_provider(client, upstream):
    call = upstream.post(KIMI_CHAT, json=OPENAI_ANSWER)
    body = {
        "model": "kimi/k2",
        "messages": [{"role": "user", "content": "weather?"}],
        "stream": False,
        "options": {"temperature": 0.4, "num_ctx": 4096},
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
    }
    response = client.post("/api/chat", json=body)
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert answer["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert (answer["prompt_eval_count"], answer["eval_count"]) == (12, 6)
    sent = json.loads(call.calls[0].request.body)
    assert sent["model"] == "k2" and sent["temperature"] == 0.4
    assert "num_ctx" not in sent and "options" not in sent


def test_api_chat_streams_ndjson_from_an_ollama_wire_provider(client, upstream):
    pieces = [
        {"model": "llama3.2", "message": {"role": "assistant", "content": "Hi"}, "done": False},
        {
            "model": "llama3.2",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "total_duration": 5000,
            "prompt_eval_count": 3,
            "eval_count": 1,
        },
    ]
    stream = b"".join(json.dumps(p).encode() + b"\n" for p in pieces)
    call = upstream.post(OLLAMA_CHAT, body=stream, content_type="application/x-ndjson")
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_ctx": 4096},
        "keep_alive": "1m",
    }
    response = client.post("/api/chat", json=body)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    out = [json.loads(line) for line in response.get_data().splitlines()]
    assert out[0]["message"]["content"] == "Hi"
    assert out[-1]["done"] is True and out[-1]["total_duration"] == 5000
    # The client's own body, as it was; chatd sets only the model and stream.
    assert json.loads(call.calls[0].request.body) == {**body, "stream": True}


def test_api_generate_answers_with_response(client, upstream):
    call = upstream.post(
        KIMI_CHAT,
        json=OPENAI_ANSWER
        | {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "42"},
                    "finish_reason": "stop",
                }
            ]
        },
    )
    body = {
        "model": "kimi/k2",
        "prompt": "?",
        "stream": False,
        "options": {"num_ctx": 4096, "temperature": 0.1},
        "keep_alive": "1m",
    }
    response = client.post("/api/generate", json=body)
    assert response.get_json()["response"] == "42"
    sent = json.loads(call.calls[0].request.body)
    assert sent["messages"] == [{"role": "user", "content": "?"}] and sent["temperature"] == 0.1
    assert "num_ctx" not in sent and "options" not in sent and "keep_alive" not in sent


def test_api_generate_to_an_ollama_wire_provider_keeps_its_knobs(client, upstream):
    answer = {"message": {"role": "assistant", "content": "42"}, "done": True, "eval_count": 2}
    call = upstream.post(OLLAMA_CHAT, json=answer)
    body = {
        "model": "llama3.2",
        "system": "be brief",
        "prompt": "?",
        "stream": False,
        "options": {"num_ctx": 4096},
        "keep_alive": "1m",
        "think": False,
    }
    response = client.post("/api/generate", json=body)
    assert response.get_json()["response"] == "42"
    assert response.get_json()["eval_count"] == 2
    sent = json.loads(call.calls[0].request.body)
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "?"},
    ]
    assert (sent["options"], sent["keep_alive"], sent["think"]) == ({"num_ctx": 4096}, "1m", False)
    assert "prompt" not in sent and "system" not in sent


def test_a_mid_stream_failure_is_a_last_error_line(client, upstream):
    stream = (
        json.dumps({"message": {"role": "assistant", "content": "Hi"}, "done": False}).encode()
        + b"\n"
        + b'{"error": "the model crashed"}\n'
    )
    upstream.post(OLLAMA_CHAT, body=stream, content_type="application/x-ndjson")
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    out = client.post("/api/chat", json=body).get_data().splitlines()
    assert json.loads(out[0])["message"]["content"] == "Hi"
    assert "the model crashed" in json.loads(out[-1])["error"]
    assert len(out) == 2  # no done line after the error


def test_empty_messages_load_without_calling_a_provider(client):
    # The strict `upstream` mock is not active: any upstream call would fail loudly.
    answer = client.post("/api/chat", json={"model": "kimi/k2", "messages": []}).get_json()
    assert (answer["done"], answer["done_reason"]) == (True, "load")
    answer = client.post(
        "/api/generate", json={"model": "m", "prompt": "", "keep_alive": 0}
    ).get_json()
    assert answer["done_reason"] == "unload" and answer["response"] == ""


@pytest.mark.parametrize(
    "path, body, status, text",
    [
        ("/api/chat", {"messages": []}, 400, "model is required"),
        ("/api/chat", b"{nope", 400, "not valid JSON"),
        ("/api/nowhere/at/all", None, 502, "local Ollama is unreachable"),
    ],
)
def test_errors_under_api_use_ollamas_envelope(client, upstream, path, body, status, text):
    if path.startswith("/api/nowhere"):
        upstream.get("http://ollama.test" + path, body=requests.ConnectionError("refused"))
        response = client.get(path)
    elif isinstance(body, bytes):
        response = client.post(path, data=body, content_type="application/json")
    else:
        response = client.post(path, json=body)
    assert response.status_code == status
    answer = response.get_json()
    assert isinstance(answer["error"], str) and text in answer["error"]


def test_provider_errors_keep_their_status_in_ollamas_envelope(client, upstream):
    upstream.post(KIMI_CHAT, status=429, json={"error": {"message": "slow down"}})
    body = {"model": "kimi/k2", "messages": [{"role": "user", "content": "x"}], "stream": False}
    response = client.post("/api/chat", json=body)
    assert response.status_code == 429
    assert "slow down" in response.get_json()["error"]


def test_wrong_method_under_api_is_405_in_ollamas_envelope(client):
    response = client.get("/api/chat")
    assert response.status_code == 405
    assert "GET is not allowed" in response.get_json()["error"]


def test_version_is_chatds(client):
    from chatd import __version__

    assert client.get("/api/version").get_json() == {"version": __version__}


def test_tags_lists_local_models_then_prefixed_cloud_models(make_app, upstream):
    local = {"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 7, "digest": "d"}
    upstream.get("http://ollama.test/api/tags", json={"models": [local]})
    upstream.get("http://kimi.test/coding/v1/models", json={"data": [{"id": "k2"}]})
    client = make_app(environ={"KIMI_API_KEY": "k"}).test_client()
    models = client.get("/api/tags").get_json()["models"]
    assert models[0] == local
    assert [m["name"] for m in models[1:]] == ["kimi/k2"]
    assert models[1]["details"]["families"] == []


def test_tags_without_the_local_ollama_still_lists_the_cloud(make_app, upstream):
    upstream.get("http://ollama.test/api/tags", body=requests.ConnectionError("refused"))
    upstream.get("http://kimi.test/coding/v1/models", json={"data": [{"id": "k2"}]})
    client = make_app(environ={"KIMI_API_KEY": "k"}).test_client()
    assert [m["name"] for m in client.get("/api/tags").get_json()["models"]] == ["kimi/k2"]


def test_the_rest_of_api_is_relayed_unchanged(client, upstream):
    show = upstream.post(
        "http://ollama.test/api/show?verbose=1",
        json={"model_info": {}, "details": {}},
        status=200,
    )
    upstream.add("DELETE", "http://ollama.test/api/delete", status=404, json={"error": "gone"})
    response = client.post("/api/show?verbose=1", json={"model": "llama3.2"})
    assert response.status_code == 200 and response.get_json() == {"model_info": {}, "details": {}}
    assert json.loads(show.calls[0].request.body) == {"model": "llama3.2"}
    response = client.delete("/api/delete", json={"model": "x"})
    assert response.status_code == 404 and response.get_json() == {"error": "gone"}


def test_relay_refuses_an_oversized_body_before_calling_ollama(make_app):
    client = make_app(max_request_bytes=1000).test_client()
    response = client.post("/api/create", data=b"x" * 2000, content_type="application/json")
    assert response.status_code == 413
    assert "max_request_bytes" in response.get_json()["error"]


# -- live: gunicorn, loopback fakes, and the real `ollama` package ---------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
LOCAL_MODEL = {
    "name": "llama3.2:latest",
    "model": "llama3.2:latest",
    "modified_at": "2025-05-04T17:37:44.706015396-07:00",
    "size": 2019393189,
    "digest": "a80c4f17acd5",
    "details": {"format": "gguf", "family": "llama", "parameter_size": "3.2B"},
}
SHOW = {
    "modelfile": "FROM llama3.2",
    "details": {"family": "llama", "format": "gguf"},
    "model_info": {"general.architecture": "llama"},
    "capabilities": ["completion", "tools"],
}


def _wants_tool(body: dict) -> bool:
    """Call the tool on a first turn; answer in text once a tool result came back."""
    return bool(body.get("tools")) and body["messages"][-1]["role"] != "tool"


class FakeLocalOllama(FakeOllama):
    """FakeOllama that also calls tools, shows a model and streams a pull, as Ollama does."""

    def answer_get(self, handler, recorded):
        if recorded.path.endswith("/api/tags"):
            return self.send(handler, 200, {"models": [LOCAL_MODEL]})
        return super().answer_get(handler, recorded)

    def handle(self, handler, recorded):
        if recorded.path.endswith("/api/show"):
            return self.send(handler, 200, SHOW)
        if recorded.path.endswith("/api/pull"):
            lines = [{"status": "pulling manifest"}, {"status": "verifying"}, {"status": "success"}]
            raw = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
            return self.send_raw(handler, 200, raw, "application/x-ndjson")
        if recorded.path.endswith("/api/chat") and _wants_tool(recorded.json):
            call = {"function": {"name": "weather", "arguments": {"city": "Oslo"}}}
            answer = self.chat_answer(recorded.json)
            answer["message"] = {"role": "assistant", "content": "", "tool_calls": [call]}
            if recorded.json.get("stream"):
                raw = json.dumps({**answer, "done": False}).encode() + b"\n"
                last = {**answer, "message": {"role": "assistant", "content": ""}}
                raw += json.dumps(last).encode() + b"\n"
                return self.send_raw(handler, 200, raw, "application/x-ndjson")
            return self.send(handler, 200, answer)
        return super().handle(handler, recorded)


class FakeToolOpenAI(FakeOpenAI):
    """FakeOpenAI that calls a tool (whole, or streamed in two argument pieces)."""

    def handle(self, handler, recorded):
        if recorded.path.endswith("/chat/completions") and _wants_tool(recorded.json):
            call = {"id": "call_77", "type": "function"}
            if not recorded.json.get("stream"):
                answer = self.chat_answer(recorded.json)
                function = {"name": "weather", "arguments": '{"city": "Oslo"}'}
                answer["choices"][0]["message"] = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{**call, "function": function}],
                }
                answer["choices"][0]["finish_reason"] = "tool_calls"
                return self.send(handler, 200, answer)
            pieces = [
                {"tool_calls": [{"index": 0, **call, "function": {"name": "weather"}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
            ]
            events = [
                {"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in pieces
            ]
            events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
            raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
            return self.send_raw(handler, 200, raw + b"data: [DONE]\n\n", "text/event-stream")
        return super().handle(handler, recorded)


@pytest.fixture(scope="module")
def local_ollama():
    with FakeLocalOllama("from local ollama") as fake:
        yield fake


@pytest.fixture(scope="module")
def kimi():
    with FakeToolOpenAI("from kimi") as fake:
        yield fake


@pytest.fixture(scope="module")
def live(local_ollama, kimi, tmp_path_factory):
    config = write_config(
        tmp_path_factory.mktemp("ollama-api") / "chatd.toml",
        timeout_secs=5.0,
        first_token_timeout_secs=5.0,
        idle_timeout_secs=5.0,
        connect_timeout_secs=1.0,
        threads=4,
        ollama_url=local_ollama.url,
        kimi_url=kimi.url + "/coding/v1",
    )
    with run_chatd(config, clean_env(KIMI_API_KEY="test-kimi-key-0004")) as chatd:
        yield chatd


@pytest.fixture
def ollama_client(live, local_ollama, kimi):
    local_ollama.behave("ok")
    kimi.behave("ok")
    client = ollama.Client(host=live.url, timeout=10)
    yield client
    client.close()


LIVE_MODELS = [("llama3.2", "from local ollama"), ("kimi/k2", "from kimi")]
HELLO = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("model, reply", LIVE_MODELS)
def test_live_chat(ollama_client, model, reply):
    response = ollama_client.chat(model=model, messages=HELLO)
    assert response.message.content == reply
    assert response.done and response.done_reason == "stop"
    assert response.prompt_eval_count > 0 and response.eval_count > 0


@pytest.mark.parametrize("model", [m for m, _ in LIVE_MODELS])
def test_live_chat_stream(ollama_client, model):
    parts = list(ollama_client.chat(model=model, messages=HELLO, stream=True))
    assert "".join(p.message.content for p in parts) == "Hello there"
    assert [p.done for p in parts][-1] is True and not any(p.done for p in parts[:-1])
    assert parts[-1].eval_count == 3


@pytest.mark.parametrize("model, reply", LIVE_MODELS)
def test_live_generate(ollama_client, model, reply):
    assert ollama_client.generate(model=model, prompt="hello").response == reply
    parts = list(ollama_client.generate(model=model, prompt="hello", stream=True))
    assert "".join(p.response for p in parts) == "Hello there"


@pytest.mark.parametrize("model", [m for m, _ in LIVE_MODELS])
@pytest.mark.parametrize("stream", [False, True])
def test_live_tool_round_trip(ollama_client, local_ollama, kimi, model, stream):
    def first(answer):
        return answer if not stream else [p for p in answer if p.message.tool_calls][0]

    messages = [{"role": "user", "content": "weather in Oslo?"}]
    answer = first(
        ollama_client.chat(model=model, messages=messages, tools=[WEATHER_TOOL], stream=stream)
    )
    call = answer.message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("weather", {"city": "Oslo"})
    messages += [answer.message, {"role": "tool", "content": "rain", "tool_name": "weather"}]
    final = ollama_client.chat(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert final.message.content.startswith("from ")
    fake = local_ollama if model == "llama3.2" else kimi
    sent = fake.chat_requests()[-1].json["messages"]
    assert sent[-1]["role"] == "tool" and sent[-1]["content"] == "rain"
    if fake is kimi:
        # An OpenAI upstream pairs the result with the call by id.
        assert sent[-1]["tool_call_id"] == sent[-2]["tool_calls"][0]["id"]


def test_live_list_has_local_and_prefixed_cloud_models(ollama_client):
    models = ollama_client.list().models
    assert [m.model for m in models] == ["llama3.2:latest", "kimi/fake-model"]
    assert (models[0].size, models[0].details.parameter_size) == (2019393189, "3.2B")


def test_live_show_and_pull_are_relayed_to_the_local_ollama(ollama_client):
    shown = ollama_client.show("llama3.2")
    assert shown.modelinfo == {"general.architecture": "llama"}
    assert "tools" in shown.capabilities
    statuses = [p.status for p in ollama_client.pull("llama3.2", stream=True)]
    assert statuses == ["pulling manifest", "verifying", "success"]


def test_live_version(live):
    from chatd import __version__

    assert requests.get(live.url + "/api/version", timeout=5).json() == {"version": __version__}


def test_live_errors_reach_the_client_as_ollama_errors(ollama_client, kimi):
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client.chat(model="openrouter/x/y", messages=HELLO)
    assert caught.value.status_code == 404 and "OPENROUTER_API_KEY" in caught.value.error
    kimi.behave("status", status=500, body={"error": {"message": "kimi is on fire"}})
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client.chat(model="kimi/k2", messages=HELLO)
    assert caught.value.status_code == 502 and "kimi is on fire" in caught.value.error


def test_live_a_cut_stream_ends_in_an_error_the_client_raises(ollama_client, local_ollama):
    local_ollama.behave("ok", error_after=1)
    parts = ollama_client.chat(model="llama3.2", messages=HELLO, stream=True)
    with pytest.raises(ollama.ResponseError, match="the model crashed"):
        list(parts)


def test_live_the_local_ollama_down_is_a_clean_502(tmp_path):
    config = write_config(
        tmp_path / "chatd.toml", ollama_url=f"http://127.0.0.1:{free_port()}", threads=2
    )
    with run_chatd(config, clean_env()) as down:
        with (
            ollama.Client(host=down.url, timeout=10) as client,
            pytest.raises(ollama.ResponseError) as caught,
        ):
            client.show("llama3.2")
        assert caught.value.status_code == 502
        assert "unreachable" in caught.value.error


# -- a name no prefix matched --------------------------------------------------------


@pytest.mark.parametrize("name", ["openai/gpt-4o", "openruoter/x/y"])
def test_unmatched_prefix_is_named_when_ollama_says_not_found(client, upstream, name):
    upstream.post(OLLAMA_CHAT, status=404, json={"error": f"model '{name}' not found"})
    body = {"model": name, "messages": [{"role": "user", "content": "x"}]}
    response = client.post("/chat", json=body)
    assert response.status_code == 502
    message = response.get_json()["error"]["message"]
    assert "not found" in message and f"no provider prefix matched {name!r}" in message
    assert "openrouter/" in message and "kimi/" in message


def test_unmatched_prefix_is_named_when_ollama_is_down(make_app, upstream):
    upstream.post(OLLAMA_CHAT, body=requests.ConnectionError("refused"))
    client = make_app(retries=0).test_client()
    body = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    response = client.post("/api/chat", json=body)
    assert "unreachable" in response.get_json()["error"]
    assert "no provider prefix matched" in response.get_json()["error"]


def test_a_matched_prefix_gets_no_hint(client, upstream):
    upstream.post(OLLAMA_CHAT, status=404, json={"error": "model 'x' not found"})
    body = {"model": "ollama/x", "messages": [{"role": "user", "content": "x"}]}
    assert "prefix" not in client.post("/chat", json=body).get_json()["error"]["message"]


def test_other_fields_go_only_to_an_ollama_wire_provider_and_context_nowhere():
    body = {"model": "m", "prompt": "x", "context": [1, 2, 3], "truncate": True, "shift": False}
    request = dialect.parse_generate(body)
    assert request.messages == [{"role": "user", "content": "x"}] and request.options == {}
    assert {k: request.native.get(k) for k in ("truncate", "shift")} == {
        "truncate": True,
        "shift": False,
    }
    assert "context" not in request.native


def test_relay_says_504_when_the_local_ollama_is_too_slow(client, upstream):
    upstream.get("http://ollama.test/api/ps", body=requests.ReadTimeout("slow"))
    response = client.get("/api/ps")
    assert response.status_code == 504
    assert "did not answer in time" in response.get_json()["error"]


def test_logprobs_an_ollama_upstream_computed_reach_the_client():
    from chatd.dialects import ollama as dialect
    from chatd.neutral import Event, Reply

    logprobs = [{"token": "Hi", "logprob": -0.1}]
    reply = Reply(content="Hi", finish_reason="stop", raw={"done": True, "logprobs": logprobs})
    assert dialect.render_reply(reply, "m", generate=False, started=0.0)["logprobs"] == logprobs
    events = [Event(content="Hi", raw={"message": {"content": "Hi"}, "logprobs": logprobs})]
    first = json.loads(next(dialect.render_stream(iter(events), "m", generate=False, started=0.0)))
    assert first["logprobs"] == logprobs
