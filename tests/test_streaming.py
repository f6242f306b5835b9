"""Streaming and the OpenAI-compatible surface, for real: gunicorn, fakes, and the openai SDK."""

from __future__ import annotations

import json
import time

import openai
import pytest
import requests

from tests.conftest import TEST_KEYS
from tests.live import clean_env, provider_urls, run_chatd, write_config

TIMEOUT_SECS = 2.0
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def live(fakes, tmp_path_factory):
    config = write_config(
        tmp_path_factory.mktemp("stream") / "chatd.toml",
        timeout_secs=TIMEOUT_SECS,
        first_token_timeout_secs=TIMEOUT_SECS,
        idle_timeout_secs=TIMEOUT_SECS,
        connect_timeout_secs=1.0,
        threads=8,
        **provider_urls(fakes),
    )
    with run_chatd(config, clean_env(**TEST_KEYS), workers=2) as chatd:
        yield chatd


@pytest.fixture
def sdk(live):
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=10)
    yield client
    client.close()


def read_events(response, deadline_secs: float = 10.0):
    """Return [(seconds since start, event name, data)] for each SSE event as it arrives."""
    started = time.monotonic()
    events, buffer = [], b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            name, data = "message", None
            for line in raw.split(b"\n"):
                if line.startswith(b"event:"):
                    name = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data = line[5:].strip().decode()
            events.append((time.monotonic() - started, name, data))
        assert time.monotonic() - started < deadline_secs
    return events


def stream_chat(live, model, path="/chat", **extra):
    return requests.post(
        live.url + path,
        json={"model": model, "messages": MESSAGES, "stream": True, **extra},
        stream=True,
        timeout=10,
    )


@pytest.mark.parametrize("model, provider", [("llama3.2", "ollama"), ("kimi/k2", "kimi")])
def test_chat_stream_sends_deltas_then_done(live, fakes, model, provider):
    response = stream_chat(live, model)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Accel-Buffering"] == "no"
    events = read_events(response)
    assert events[-1][2] == "[DONE]"
    data = [json.loads(d) for _, _, d in events[:-1]]
    assert "".join(e["delta"].get("content", "") for e in data) == "Hello there"
    assert all(e["provider"] == provider for e in data)
    assert data[-1]["done_reason"] == "stop"
    assert data[-1]["usage"]["completion_tokens"] == 3
    assert data[-1]["usage"]["total_tokens"] > 3
    assert fakes[provider].chat_requests()[-1].json["stream"] is True


def test_openai_style_upstream_is_asked_for_usage(live, fakes):
    read_events(stream_chat(live, "openrouter/a/b"))
    sent = fakes["openrouter"].chat_requests()[-1].json
    assert sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("model, provider", [("llama3.2", "ollama"), ("opencode/m", "opencode")])
def test_pieces_arrive_unbuffered(live, fakes, model, provider):
    fakes[provider].behave("ok", pieces=["a", "b", "c", "d", "e"], interval=0.3)
    events = read_events(stream_chat(live, model))
    deltas = [t for t, _, d in events if d != "[DONE]" and json.loads(d)["delta"]]
    assert len(deltas) == 5
    # Five pieces 0.3 s apart: buffered, they would land together at the end.
    assert deltas[-1] - deltas[0] > 0.9
    gaps = [b - a for a, b in zip(deltas, deltas[1:], strict=False)]
    assert min(gaps) > 0.15


@pytest.mark.parametrize(
    "behaviour", [{"cut_after": 2}, {"error_after": 2}], ids=["cut", "in-band error"]
)
@pytest.mark.parametrize("model, provider", [("llama3.2", "ollama"), ("kimi/k2", "kimi")])
def test_failure_mid_stream_ends_with_error_event_and_no_done(
    live, fakes, model, provider, behaviour
):
    fakes[provider].behave("ok", pieces=["a", "b", "c", "d"], **behaviour)
    response = stream_chat(live, model)
    assert response.status_code == 200
    events = read_events(response)
    assert all(d != "[DONE]" for _, _, d in events)
    name, data = events[-1][1], json.loads(events[-1][2])
    assert name == "error"
    assert data["error"]["type"] == "upstream_error"
    assert provider in data["error"]["message"]


def test_error_before_first_byte_keeps_its_status(live, fakes):
    fakes["ollama"].behave("status", status=404, body={"error": "model 'x' not found"})
    response = stream_chat(live, "x")
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("application/json")
    assert "model 'x' not found" in response.json()["error"]["message"]
    fakes["openrouter"].behave("status", status=429, body={}, headers={"Retry-After": "3"})
    response = stream_chat(live, "openrouter/a/b")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"


def test_client_disconnect_closes_the_upstream(live, fakes):
    fake = fakes["ollama"]
    fake.behave("ok", pieces=["x"] * 100, interval=0.1)
    before = fake.hangups
    response = stream_chat(live, "llama3.2")
    first = next(response.iter_content(chunk_size=None))
    assert b"delta" in first
    response.close()
    deadline = time.monotonic() + 5
    while fake.hangups == before and time.monotonic() < deadline:
        time.sleep(0.05)
    # The fake noticed the hang-up long before its 10 s stream would have ended.
    assert fake.hangups == before + 1


def test_idle_upstream_is_cut_after_the_idle_deadline(live, fakes):
    fakes["ollama"].behave("ok", pieces=["a", "b", "c"], stall_after=2, stall=TIMEOUT_SECS * 4)
    started = time.monotonic()
    events = read_events(stream_chat(live, "llama3.2"))
    elapsed = time.monotonic() - started
    assert events[-1][1] == "error"
    error = json.loads(events[-1][2])["error"]
    assert error["type"] == "upstream_timeout"
    assert error["timeout"] == "idle_timeout_secs"
    assert TIMEOUT_SECS * 0.9 <= elapsed < TIMEOUT_SECS + 1.5


def test_long_but_steady_stream_outlives_the_deadline(live, fakes):
    # 8 pieces 0.4 s apart is 2.8 s in all, more than timeout_secs, but no gap is.
    fakes["ollama"].behave("ok", pieces=list("abcdefgh"), interval=0.4)
    events = read_events(stream_chat(live, "llama3.2"))
    assert events[-1][2] == "[DONE]"
    assert events[-1][0] > TIMEOUT_SECS


# -- the OpenAI-compatible surface through the real openai SDK ------------------


@pytest.mark.parametrize(
    "model, reply",
    [("ollama/llama3.2", "from local ollama"), ("openrouter/meta/llama", "from openrouter")],
)
def test_sdk_non_streaming(sdk, model, reply):
    completion = sdk.chat.completions.create(model=model, messages=MESSAGES, max_tokens=5)
    assert completion.object == "chat.completion"
    assert completion.model == model
    assert completion.choices[0].message.content == reply
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens > 0


@pytest.mark.parametrize(
    "model, provider",
    [
        ("ollama/llama3.2", "ollama"),
        ("glm-4.6:cloud", "ollama_cloud"),
        ("openrouter/meta/llama", "openrouter"),
        ("opencode/glm", "opencode"),
        ("kimi/kimi-for-coding", "kimi"),
    ],
)
def test_sdk_streaming_every_provider(sdk, fakes, model, provider):
    stream = sdk.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 3
    assert all(c.model == model for c in chunks)
    assert fakes[provider].chat_requests()[-1].json["stream"] is True


def test_sdk_streaming_without_usage_gets_no_empty_chunk(sdk):
    chunks = list(sdk.chat.completions.create(model="kimi/k", messages=MESSAGES, stream=True))
    assert all(c.choices for c in chunks)


def test_sdk_sees_a_mid_stream_failure(sdk, fakes):
    fakes["ollama"].behave("ok", pieces=["a", "b", "c"], cut_after=2)
    with pytest.raises(openai.APIError):
        list(sdk.chat.completions.create(model="llama3.2", messages=MESSAGES, stream=True))


def test_sdk_errors_keep_status_and_say_when_not_to_retry(sdk, live, fakes):
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="", messages=MESSAGES)
    fakes["kimi"].behave("status", status=401, body={"error": {"message": "invalid key"}})
    response = requests.post(
        live.url + "/v1/chat/completions", json={"model": "kimi/k", "messages": MESSAGES}
    )
    assert response.status_code == 502
    assert response.headers["x-should-retry"] == "false"
    error = response.json()["error"]
    assert "invalid key" in error["message"] and error["code"] == "upstream_error"
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="kimi/k", messages=MESSAGES)


def test_quota_429_is_not_retried_but_a_rate_limit_is(live, fakes):
    def post():
        return requests.post(
            live.url + "/v1/chat/completions", json={"model": "x:cloud", "messages": MESSAGES}
        )

    fakes["ollama_cloud"].behave(
        "status", status=429, body={"error": "you have reached your weekly usage limit"}
    )
    fake = fakes["ollama_cloud"]
    before = len(fake.chat_requests())
    assert post().headers.get("x-should-retry") == "false"
    assert len(fake.chat_requests()) - before == 1
    fake.behave("status", status=429, body={"error": "too many requests"})
    before = len(fake.chat_requests())
    response = post()
    assert response.status_code == 429
    assert len(fake.chat_requests()) - before == 2  # retried by chatd...
    assert response.headers["x-should-retry"] == "false"  # ...so not by the client too


def test_response_format_maps_to_ollama_format(live, fakes):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    response = requests.post(
        live.url + "/v1/chat/completions",
        json={
            "model": "ollama/llama3.2",
            "messages": MESSAGES,
            "max_completion_tokens": 7,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": schema},
            },
        },
    )
    assert response.status_code == 200
    sent = fakes["ollama"].chat_requests()[-1].json
    assert sent["format"] == schema
    assert sent["options"] == {"num_predict": 7}


def test_models_lists_every_provider_with_routing_prefixes(sdk):
    ids = {model.id for model in sdk.models.list()}
    assert {
        "ollama/llama3.2:latest",
        "ollama_cloud/llama3.2:latest",
        "openrouter/fake-model",
        "opencode/fake-model",
        "kimi/fake-model",
    } <= ids


def test_v1_aliases(live):
    response = requests.post(
        live.url + "/v1/chat", json={"model": "llama3.2", "messages": MESSAGES}, timeout=10
    )
    assert response.status_code == 200
    assert response.json()["provider"] == "ollama"
    assert "ollama" in requests.get(live.url + "/v1/chat/providers", timeout=10).json()["providers"]


def test_a_stream_read_by_urllib3_is_never_offered_to_the_relay(app):
    """Its reads block: on the relay they would stall every stream of the worker."""
    from chatd.observability import CallRecord
    from chatd.relay import CAN_RELAY, RELAYED
    from chatd.streaming import stream_response

    class Upstream:
        relayable = False

        def close(self):
            pass

    with app.test_request_context("/chat", method="POST", environ_base={CAN_RELAY: True}):
        from flask import request

        record = CallRecord("r", "POST", "/chat", "-")
        stream_response(iter([b"x"]), Upstream(), record, lambda body: b"")
        assert RELAYED not in request.environ
        Upstream.relayable = True
        stream_response(iter([b"x"]), Upstream(), record, lambda body: b"")
        assert RELAYED in request.environ
