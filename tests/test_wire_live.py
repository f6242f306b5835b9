"""The Anthropic and Responses wire formats for real: gunicorn, config-declared providers,
the loopback fakes of tests/fakes_wire.py, and the real openai SDK on /v1/chat/completions."""

from __future__ import annotations

import json

import openai
import pytest

from tests.fakes_wire import FakeAnthropic, FakeResponses
from tests.live import clean_env, run_chatd

KEYS = {"CLAUDE_TEST_KEY": "test-claude-key-0101", "GPT_TEST_KEY": "test-gpt-key-0102"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
QUESTION = [{"role": "user", "content": "weather in Paris?"}]


@pytest.fixture(scope="module")
def upstreams():
    with (
        FakeAnthropic("from claude", thinking="Let me think.") as claude,
        FakeResponses("from gpt", thinking="Let me think.") as gpt,
    ):
        yield {"claude": claude, "gpt": gpt}


@pytest.fixture(scope="module")
def live(upstreams, tmp_path_factory):
    config = tmp_path_factory.mktemp("wire") / "chatd.toml"
    config.write_text(
        f"""
[chatd]
timeout_secs = 5.0
connect_timeout_secs = 1.0

[chatd.providers.claude]
wire = "anthropic"
url = "{upstreams["claude"].url}/v1"
key_env = "CLAUDE_TEST_KEY"
auth = "x-api-key"
retries = 1
retry_max_wait_secs = 1.0

[chatd.providers.gpt]
wire = "responses"
url = "{upstreams["gpt"].url}/v1"
key_env = "GPT_TEST_KEY"
"""
    )
    with run_chatd(config, clean_env(**KEYS)) as chatd:
        yield chatd


@pytest.fixture
def sdk(live, upstreams):
    for fake in upstreams.values():
        fake.behave()
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=10)
    yield client
    client.close()


PROVIDERS = ["claude", "gpt"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sdk_non_streaming(sdk, upstreams, provider):
    completion = sdk.chat.completions.create(
        model=f"{provider}/fake-model", messages=[{"role": "user", "content": "hi"}], max_tokens=50
    )
    assert completion.model == f"{provider}/fake-model"
    assert completion.choices[0].message.content == f"from {provider}"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 13
    sent = upstreams[provider].chat_requests()[-1]
    assert sent.json["model"] == "fake-model"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sdk_streaming(sdk, provider):
    stream = sdk.chat.completions.create(
        model=f"{provider}/fake-model",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.prompt_tokens == 13  # claude: 11 input + 2 cache-read


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sdk_tool_round_trip(sdk, upstreams, provider):
    model = f"{provider}/fake-model"
    first = sdk.chat.completions.create(model=model, messages=QUESTION, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages = [
        *QUESTION,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = sdk.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == f"from {provider}"
    sent = upstreams[provider].chat_requests()[-1].json
    if provider == "claude":
        result = sent["messages"][-1]["content"][0]
        assert result == {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}
    else:
        assert sent["input"][-1] == {
            "type": "function_call_output",
            "call_id": call.id,
            "output": "sunny",
        }


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sdk_streamed_tool_call(sdk, provider):
    stream = sdk.chat.completions.create(
        model=f"{provider}/fake-model", messages=QUESTION, tools=[WEATHER_TOOL], stream=True
    )
    chunks = [c for c in stream if c.choices]
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert {d.index for d in deltas} == {0}
    assert deltas[0].function.name == "get_weather" and deltas[0].id
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_anthropic_wire_sends_its_version_header_and_the_key_as_x_api_key(sdk, upstreams):
    sdk.chat.completions.create(
        model="claude/fake-model", messages=[{"role": "user", "content": "hi"}]
    )
    headers = {k.lower(): v for k, v in upstreams["claude"].chat_requests()[-1].headers.items()}
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["x-api-key"] == KEYS["CLAUDE_TEST_KEY"]
    assert "authorization" not in headers


def test_529_overloaded_is_retried_like_a_503(sdk, upstreams):
    envelope = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    fake = upstreams["claude"]
    fake.behave("status", status=529, body=envelope, times=1)
    before = len(fake.chat_requests())
    completion = sdk.chat.completions.create(
        model="claude/fake-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "from claude"
    assert len(fake.chat_requests()) == before + 2  # the 529, then the retry


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sdk_sees_a_mid_stream_failure(sdk, upstreams, provider):
    upstreams[provider].behave("ok", error_after=3)
    with pytest.raises(openai.APIError):
        list(
            sdk.chat.completions.create(
                model=f"{provider}/fake-model",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
            )
        )
