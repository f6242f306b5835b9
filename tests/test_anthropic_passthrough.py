"""An Anthropic client to an Anthropic-wire provider: the body passes through.

chatd's Anthropic dialect keeps the client's own body (``request.native``) and
the Anthropic wire format sends it on with only ``model`` and ``stream`` set,
so what only Anthropic understands (``cache_control``, ``metadata``,
``thinking``, tool blocks) reaches it untouched. Live: gunicorn, the real
``anthropic`` package, and the Anthropic-speaking fake of tests/fakes_wire.py.
"""

from __future__ import annotations

import anthropic
import pytest

from tests.fakes_wire import FakeAnthropic
from tests.live import clean_env, run_chatd, write_config

KEY = "anthropic-upstream-key-0009"
SYSTEM = [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]
TOOLS = [
    {
        "name": "weather",
        "description": "the weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with FakeAnthropic("from claude", thinking="let me see") as fake:
        path = write_config(tmp_path_factory.mktemp("passthrough") / "chatd.toml", timeout_secs=5.0)
        with open(path, "a") as f:
            f.write(
                f'\n[chatd.providers.claude]\nwire = "anthropic"\nurl = "{fake.url}/v1"\n'
                'key_env = "CLAUDE_KEY"\nauth = "x-api-key"\n'
            )
        with run_chatd(path, clean_env(CLAUDE_KEY=KEY)) as chatd:
            chatd.fake = fake
            yield chatd


@pytest.fixture
def client(live):
    live.fake.behave()
    with anthropic.Anthropic(
        base_url=live.url, api_key="unused", max_retries=0, timeout=10
    ) as client:
        yield client


def test_the_clients_body_reaches_an_anthropic_provider_with_only_the_model_changed(live, client):
    message = client.messages.create(
        model="claude/claude-sonnet-4-6",
        max_tokens=100,
        system=SYSTEM,
        metadata={"user_id": "u-1"},
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"anthropic-beta": "context-management-2025-06-27"},
    )
    assert message.content[-1].text == "from claude"
    assert message.content[0].type == "thinking" and message.content[0].signature == "c2ln"
    assert message.model == "claude/claude-sonnet-4-6"
    recorded = live.fake.chat_requests()[-1]
    assert recorded.headers["x-api-key"] == KEY
    assert "Authorization" not in recorded.headers
    # The client's beta flags go with its body (Anthropic refuses beta fields without them).
    assert recorded.headers["anthropic-beta"] == "context-management-2025-06-27"
    sent = recorded.json
    assert sent == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "system": SYSTEM,
        "metadata": {"user_id": "u-1"},
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    }


def test_a_streamed_tool_round_trip_passes_through(live, client):
    with client.messages.stream(
        model="claude/claude-sonnet-4-6",
        max_tokens=100,
        tools=TOOLS,
        messages=[{"role": "user", "content": "weather in Paris?"}],
    ) as stream:
        first = stream.get_final_message()
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert (call.name, call.input) == ("weather", {"city": "Paris"})
    assert first.stop_reason == "tool_use"
    reply = client.messages.create(
        model="claude/claude-sonnet-4-6",
        max_tokens=100,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
            },
        ],
    )
    assert reply.content[-1].text == "from claude"
    sent = live.fake.chat_requests()[-1].json
    assert sent["messages"][2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": call.id,
        "content": "sunny",
    }
    # The thinking block, signature included, went back as the client sent it.
    assert sent["messages"][1]["content"][0]["type"] == "thinking"
    assert sent["messages"][1]["content"][0]["signature"] == "c2ln"
