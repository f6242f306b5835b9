"""Each wire format: what is sent upstream, and how the answer comes back.

The upstream is a strict ``responses`` mock: an unexpected call fails the test,
and so does an expected call that never happened.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from responses import matchers

import chatd
from chatd.adapters.base import retry_after_secs
from tests.conftest import TEST_KEYS

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
OLLAMA_ANSWER = {
    "model": "llama3.2",
    "message": {"role": "assistant", "content": "Hello!"},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 26,
    "eval_count": 9,
}
OPENAI_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "x",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "length"}
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
}
URLS = {
    "ollama": "http://ollama.test/api/chat",
    "ollama_cloud": "http://ollama-cloud.test/api/chat",
    "openrouter": "http://openrouter.test/api/v1/chat/completions",
    "opencode": "http://opencode.test/zen/v1/chat/completions",
    "kimi": "http://kimi.test/coding/v1/chat/completions",
}
KEYS = {
    "ollama_cloud": TEST_KEYS["OLLAMA_API_KEY"],
    "openrouter": TEST_KEYS["OPENROUTER_API_KEY"],
    "opencode": TEST_KEYS["OPENCODE_API_KEY"],
    "kimi": TEST_KEYS["KIMI_API_KEY"],
}


def sent(upstream) -> dict:
    return json.loads(upstream.calls[-1].request.body)


def chat(client, **body):
    return client.post("/chat", json={"messages": MESSAGES, **body})


def test_ollama_body_puts_sampling_in_options(client, upstream):
    upstream.post(URLS["ollama"], json=OLLAMA_ANSWER)
    response = chat(
        client,
        model="llama3.2",
        temperature=0.2,
        top_p=0.9,
        max_tokens=64,
        stop="\n\n",
        seed=7,
        format="json",
        options={"num_ctx": 8192, "temperature": 0.5, "keep_alive": "10m"},
    )
    assert response.status_code == 200, response.json
    assert sent(upstream) == {
        "model": "llama3.2",
        "messages": MESSAGES,
        "stream": False,
        "format": "json",
        # options merged last: they win
        "options": {
            "temperature": 0.5,
            "top_p": 0.9,
            "num_predict": 64,
            "stop": ["\n\n"],
            "seed": 7,
            "num_ctx": 8192,
        },
        # a top-level Ollama knob passed in options lands where Ollama reads it
        "keep_alive": "10m",
    }


def test_ollama_answer_is_normalized(client, upstream):
    upstream.post(URLS["ollama"], json=OLLAMA_ANSWER)
    body = chat(client, model="ollama/llama3.2").json
    assert body["model"] == "llama3.2" and body["provider"] == "ollama"
    assert body["message"] == {"role": "assistant", "content": "Hello!"}
    assert body["done_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 26, "completion_tokens": 9, "total_tokens": 35}
    assert isinstance(body["latency_ms"], int)


def test_openai_body_is_a_near_pass_through(client, upstream):
    upstream.post(URLS["openrouter"], json=OPENAI_ANSWER)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat(
        client,
        model="openrouter/meta/llama",
        temperature=0.2,
        top_p=0.9,
        max_tokens=64,
        stop=["END"],
        seed=7,
        format=schema,
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice="auto",
        options={"top_k": 40, "temperature": 0.5},
    )
    assert sent(upstream) == {
        "model": "meta/llama",
        "messages": MESSAGES,
        "stream": False,
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 64,
        "stop": ["END"],
        "seed": 7,
        "tool_choice": "auto",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": schema},
        },
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "top_k": 40,
    }


def test_format_json_is_json_mode_for_openai(client, upstream):
    upstream.post(URLS["kimi"], json=OPENAI_ANSWER)
    chat(client, model="kimi/k", format="json")
    assert sent(upstream)["response_format"] == {"type": "json_object"}


def test_openai_answer_is_normalized(client, upstream):
    upstream.post(URLS["opencode"], json=OPENAI_ANSWER)
    body = chat(client, model="opencode/glm").json
    assert body["model"] == "glm" and body["provider"] == "opencode"
    assert body["message"] == {"role": "assistant", "content": "Hi!"}
    assert body["done_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


@pytest.mark.parametrize("provider, model", [("ollama", "llama3.2"), ("kimi", "kimi/k")])
def test_tool_calls_come_in_one_shape_whatever_the_upstream(client, upstream, provider, model):
    """/chat gives OpenAI-style tool calls (arguments as JSON text) from every wire format."""
    if provider == "ollama":
        calls = [{"id": "c1", "function": {"name": "weather", "arguments": {"city": "Tokyo"}}}]
        answer = {
            **OLLAMA_ANSWER,
            "message": {"role": "assistant", "content": "", "tool_calls": calls},
        }
    else:
        calls = [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Tokyo"}'},
            }
        ]
        message = {"role": "assistant", "content": None, "tool_calls": calls}
        answer = {
            **OPENAI_ANSWER,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        }
    upstream.post(URLS[provider], json=answer)
    body = chat(client, model=model).json
    [call] = body["message"]["tool_calls"]
    assert call["id"] == "c1" and call["type"] == "function"
    assert call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Tokyo"}
    assert body["message"]["content"] == ""
    assert body["done_reason"] == "tool_calls"


@pytest.mark.parametrize(
    "provider, model",
    [
        ("ollama", "llama3.2"),
        ("ollama_cloud", "glm-4.6:cloud"),
        ("openrouter", "openrouter/a/b"),
        ("opencode", "opencode/glm"),
        ("kimi", "kimi/k"),
    ],
)
def test_each_provider_gets_its_own_key_and_an_honest_user_agent(client, upstream, provider, model):
    answer = OLLAMA_ANSWER if provider.startswith("ollama") else OPENAI_ANSWER
    headers = {"User-Agent": f"chatd/{chatd.__version__}"}
    if provider in KEYS:
        headers["Authorization"] = f"Bearer {KEYS[provider]}"
    upstream.post(URLS[provider], json=answer, match=[matchers.header_matcher(headers)])
    assert chat(client, model=model).status_code == 200
    if provider == "ollama":
        assert "Authorization" not in upstream.calls[-1].request.headers


def test_openai_surface_translates_an_ollama_answer(client, upstream):
    calls = [{"function": {"name": "weather", "arguments": {"city": "Tokyo"}}}]
    answer = {
        **OLLAMA_ANSWER,
        "message": {"role": "assistant", "content": "", "tool_calls": calls, "thinking": "hmm"},
    }
    upstream.post(URLS["ollama"], json=answer)
    body = client.post(
        "/v1/chat/completions",
        json={"model": "ollama/llama3.2", "messages": [{"role": "developer", "content": "x"}]},
    ).json
    assert body["object"] == "chat.completion" and body["model"] == "ollama/llama3.2"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Tokyo"}
    assert choice["message"]["reasoning"] == "hmm"
    assert body["usage"] == {"prompt_tokens": 26, "completion_tokens": 9, "total_tokens": 35}
    # developer turns reach Ollama as system turns
    assert sent(upstream)["messages"] == [{"role": "system", "content": "x"}]


def test_openai_surface_passes_openai_answers_through(client, upstream):
    upstream.post(URLS["kimi"], json={**OPENAI_ANSWER, "cost": "0.01"})
    body = client.post(
        "/v1/chat/completions", json={"model": "kimi/kimi-for-coding", "messages": MESSAGES}
    ).json
    assert body == {**OPENAI_ANSWER, "cost": "0.01", "model": "kimi/kimi-for-coding"}


def test_openai_messages_become_ollama_messages(client, upstream):
    upstream.post(URLS["ollama"], json=OLLAMA_ANSWER)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"a": 1}'},
                },
            ],
        },
    ]
    client.post("/v1/chat/completions", json={"model": "ollama/llava", "messages": messages})
    first, second = sent(upstream)["messages"]
    assert first == {"role": "user", "content": "what is this?", "images": ["AAAA"]}
    assert second["tool_calls"][0]["function"]["arguments"] == {"a": 1}


def test_remote_images_are_refused_for_ollama(client):
    messages = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
        }
    ]
    response = client.post(
        "/v1/chat/completions", json={"model": "ollama/llava", "messages": messages}
    )
    assert response.status_code == 400
    assert "data: URLs" in response.json["error"]["message"]


@pytest.mark.parametrize(
    "value, low, high",
    [
        ("7", 7, 7),
        ("0.5", 0.5, 0.5),
        ("-3", 0, 0),
        (None, None, None),
        ("soon", None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0, 0),  # in the past: retry now
    ],
)
def test_retry_after_is_seconds_or_an_http_date(value, low, high):
    got = retry_after_secs(value)
    assert got is None if low is None else low <= got <= high


def test_retry_after_as_a_future_http_date_is_the_seconds_until_then():
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= retry_after_secs(when) <= 30
