"""Providers as data rows: built-in rows, rows changed or declared in the config,
how keys are sent, and OpenCode's per-model wire formats."""

from __future__ import annotations

import json

import pytest
import requests
from responses import matchers

from chatd.config import ConfigError, Settings, load_settings
from chatd.providers import KNOWN_PROVIDERS, OPENCODE_GO_WIRES, OPENCODE_ZEN_WIRES, WIRES
from chatd.routing import Route, Router
from tests.conftest import TEST_KEYS, TEST_URLS
from tests.live import clean_env, provider_urls, run_chatd, write_config

OPENAI_ANSWER = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1},
}
MESSAGES = [{"role": "user", "content": "hi"}]


def test_every_wire_a_row_names_is_one_chatd_speaks():
    from chatd.adapters import ADAPTERS

    assert set(WIRES) == set(ADAPTERS)
    for spec in KNOWN_PROVIDERS.values():
        assert set(spec.wires()) <= set(WIRES)


def load(tmp_path, text: str, environ=None) -> Settings:
    path = tmp_path / "chatd.toml"
    path.write_text(text)
    return load_settings(str(path), environ=environ or {})


def test_a_provider_declared_in_config_routes_by_its_prefix(tmp_path):
    settings = load(
        tmp_path,
        '[chatd.providers.myvllm]\nwire = "openai"\nurl = "http://vllm.test/v1"\n'
        'key_env = "MY_KEY"\ntimeout_secs = 9\n',
    )
    spec = settings.specs["myvllm"]
    assert (spec.wire, spec.url, spec.key_env, spec.model_prefix) == (
        "openai",
        "http://vllm.test/v1",
        "MY_KEY",
        "myvllm/",
    )
    assert settings.policy("myvllm", "timeout_secs") == 9
    assert Router(settings.specs.values()).resolve("myvllm/qwen3") == Route("myvllm", "qwen3")


def test_flat_keys_and_tables_set_the_same_row(tmp_path):
    settings = load(
        tmp_path,
        '[chatd]\nkimi_url = "http://flat.test/v1"\n'
        '[chatd.providers.openrouter]\nurl = "http://table.test/v1"\nprefix = "or/"\n',
    )
    assert settings.url("kimi") == "http://flat.test/v1"
    assert settings.url("openrouter") == "http://table.test/v1"
    assert Router(settings.specs.values()).resolve("or/a/b") == Route("openrouter", "a/b")


@pytest.mark.parametrize(
    "text, words",
    [
        ('[chatd.providers.new]\nwire = "openai"\n', "needs url"),
        ('[chatd.providers.new]\nurl = "http://x.test"\n', "needs wire"),
        ('[chatd.providers.new]\nurl = "http://x.test"\nwire = "grpc"\n', "wire must be"),
        ('[chatd.providers.kimi]\nauth = "basic"\n', "auth must be"),
        ('[chatd.providers.kimi]\nurl = "ftp://x"\n', "url must be"),
        (
            '[chatd.providers.kimi]\nheaders = {Authorization = "Bearer x"}\n',
            "must not carry a key",
        ),
        ('[chatd.providers.kimi]\nwire_rules = {"a*" = "soap"}\n', "unknown wire format"),
        ('[chatd.providers.kimi]\nprefix = "openrouter/"\n', "share the prefix"),
        ('[chatd.providers."Bad Name"]\nurl = "http://x.test"\nwire = "openai"\n', "provider name"),
        ('[chatd.providers.kimi]\ncolour = "blue"\n', "unknown field 'colour'"),
        # What requests would refuse when a worker builds its session (a reload
        # with such a typo is refused instead of taking the workers down).
        ('[chatd.providers.kimi]\nheaders = {"X-A" = " leading space"}\n', "not a valid header"),
        ('[chatd.providers.kimi]\nheaders = {"X-A" = "a\\r\\nb"}\n', "not a valid header"),
        ('[chatd.providers.kimi]\nheaders = {"X A" = "b"}\n', "not a valid header"),
    ],
)
def test_a_bad_provider_row_names_the_table_and_the_field(tmp_path, text, words):
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, text)
    assert words in str(raised.value)
    assert "chatd.toml" in str(raised.value)


@pytest.mark.parametrize(
    "model, wire",
    [
        ("claude-sonnet-4-6", "anthropic"),
        ("qwen3.6-plus", "anthropic"),
        ("gpt-5.5", "responses"),
        ("glm-5.1", "openai"),
        ("kimi-k2.6", "openai"),
        ("big-pickle", "openai"),
        ("gpt-5-nano-free", "openai"),
        ("Claude-Sonnet-4-6", "anthropic"),
        ("minimax-m2.5", "openai"),
    ],
)
def test_opencode_zen_picks_the_documented_endpoint(model, wire):
    assert KNOWN_PROVIDERS["opencode"].wire_for(model) == wire


@pytest.mark.parametrize(
    "model, wire",
    [
        ("minimax-m2.7", "anthropic"),
        ("qwen3.6-plus", "anthropic"),
        ("grok-4.5", "responses"),
        ("gpt-5.6-luna", "responses"),
        ("glm-5.1", "openai"),
        ("deepseek-v4-flash", "openai"),
    ],
)
def test_opencode_go_has_its_own_table(model, wire):
    assert KNOWN_PROVIDERS["opencode_go"].wire_for(model) == wire


def test_the_tables_name_only_known_or_unsupported_formats():
    for _, wire in OPENCODE_ZEN_WIRES + OPENCODE_GO_WIRES:
        assert wire in WIRES or wire.startswith("unsupported:")


def test_a_gemini_model_is_a_400_naming_the_family_and_endpoint(client):
    response = client.post("/chat", json={"model": "opencode/gemini-3-pro", "messages": MESSAGES})
    assert response.status_code == 400
    message = response.json["error"]["message"]
    assert "gemini" in message and "http://opencode.test/zen/v1" in message


def test_opencode_go_reaches_the_go_catalogue(client, upstream):
    upstream.post(
        "http://opencode.test/zen/go/v1/chat/completions",
        json=OPENAI_ANSWER,
        match=[
            matchers.header_matcher({"Authorization": f"Bearer {TEST_KEYS['OPENCODE_API_KEY']}"})
        ],
    )
    response = client.post("/chat", json={"model": "opencode-go/glm-5.1", "messages": MESSAGES})
    assert response.status_code == 200
    assert response.json["provider"] == "opencode_go" and response.json["model"] == "glm-5.1"


@pytest.mark.parametrize(
    "auth, sent, absent",
    [
        ("bearer", {"Authorization": "Bearer k-1"}, "x-api-key"),
        ("x-api-key", {"x-api-key": "k-1"}, "Authorization"),
        ("both", {"Authorization": "Bearer k-1", "x-api-key": "k-1"}, None),
    ],
)
def test_the_key_is_sent_as_the_row_says(make_app, upstream, auth, sent, absent):
    upstream.post(
        "http://corp.test/v1/chat/completions",
        json=OPENAI_ANSWER,
        match=[matchers.header_matcher({**sent, "X-Team": "search"})],
    )
    app = make_app(
        environ={"CORP_KEY": "k-1"},
        providers={
            "corp": {
                "url": "http://corp.test/v1",
                "wire": "openai",
                "key_env": "CORP_KEY",
                "auth": auth,
                "headers": {"X-Team": "search"},
            }
        },
    )
    response = app.test_client().post("/chat", json={"model": "corp/m", "messages": MESSAGES})
    assert response.status_code == 200
    if absent:
        assert absent not in upstream.calls[-1].request.headers


def test_a_declared_provider_without_its_key_is_a_404_naming_the_variable(make_app):
    app = make_app(
        environ={},
        providers={"corp": {"url": "http://corp.test/v1", "wire": "openai", "key_env": "CORP_KEY"}},
    )
    response = app.test_client().post("/chat", json={"model": "corp/m", "messages": MESSAGES})
    assert response.status_code == 404
    assert "CORP_KEY" in response.json["error"]["message"]


def test_a_provider_declared_only_in_the_config_file_serves_over_http(fakes, tmp_path):
    """The issue's example, for real: gunicorn, a config file, an OpenAI-style fake."""
    path = write_config(tmp_path / "chatd.toml", timeout_secs=5.0, **provider_urls(fakes))
    with open(path, "a") as f:
        f.write(
            f'\n[chatd.providers.myvllm]\nwire = "openai"\nurl = "{fakes["kimi"].url}/v1"\n'
            'key_env = "MY_KEY"\n'
        )
    env = clean_env(**TEST_KEYS, MY_KEY="vllm-key-7")
    with run_chatd(path, env) as live:
        response = requests.post(
            live.url + "/chat", json={"model": "myvllm/qwen3", "messages": MESSAGES}, timeout=10
        )
        assert response.status_code == 200, response.text
        assert response.json()["provider"] == "myvllm"
        assert response.json()["message"]["content"] == "from kimi"
        listed = requests.get(live.url + "/chat/providers", timeout=10).json()
        assert listed["providers"]["myvllm"] is True
    [call] = [r for r in fakes["kimi"].chat_requests() if json.loads(r.body)["model"] == "qwen3"]
    assert call.path == "/v1/chat/completions"
    assert call.headers["Authorization"] == "Bearer vllm-key-7"


def test_test_urls_cover_every_builtin_row():
    # Keeps the unit tests from ever reaching a real vendor.
    for name in KNOWN_PROVIDERS:
        assert f"{name}_url" in TEST_URLS


ANTHROPIC_ANSWER = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "from claude"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 3, "output_tokens": 2},
}
RESPONSES_ANSWER = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "output": [
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "from gpt"}],
        }
    ],
    "usage": {"input_tokens": 3, "output_tokens": 2},
}


@pytest.mark.parametrize(
    "model, path, answer, text",
    [
        ("opencode/claude-sonnet-4-6", "/zen/v1/messages", ANTHROPIC_ANSWER, "from claude"),
        ("opencode/gpt-5.5", "/zen/v1/responses", RESPONSES_ANSWER, "from gpt"),
        ("opencode/glm-5.1", "/zen/v1/chat/completions", OPENAI_ANSWER, "hi"),
        ("opencode-go/minimax-m2.7", "/zen/go/v1/messages", ANTHROPIC_ANSWER, "from claude"),
    ],
)
def test_each_opencode_model_goes_to_its_endpoint_with_the_one_key(
    client, upstream, model, path, answer, text
):
    upstream.post(
        "http://opencode.test" + path,
        json=answer,
        match=[
            matchers.header_matcher({"Authorization": f"Bearer {TEST_KEYS['OPENCODE_API_KEY']}"})
        ],
    )
    response = client.post("/chat", json={"model": model, "messages": MESSAGES})
    assert response.status_code == 200, response.json
    assert response.json["message"]["content"] == text


def test_aliases_are_resolved_with_every_row_at_load(tmp_path):
    declared = '[chatd.providers.corp]\nurl = "http://corp.test/v1"\nwire = "openai"\n'
    settings = load(tmp_path, declared + '[chatd.aliases]\nfast = ["corp/m", "ollama/x"]\n')
    assert settings.aliases["fast"] == ("corp/m", "ollama/x")
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, '[chatd.aliases]\nsmart = ["opencode/gemini-3-pro"]\n')
    assert "smart" in str(raised.value) and "gemini" in str(raised.value)


@pytest.mark.parametrize(
    "wire, field",
    [
        ("anthropic", "system"),
        ("anthropic", "stop_sequences"),
        ("responses", "store"),
        ("responses", "input"),
    ],
)
def test_options_cannot_replace_what_a_wire_format_fills(make_app, wire, field):
    """The translated prompt, the limits and `store: false` are chatd's, whatever options say."""
    app = make_app(
        environ={"CORP_KEY": "k-1"},
        providers={"corp": {"url": "http://corp.test/v1", "wire": wire, "key_env": "CORP_KEY"}},
    )
    response = app.test_client().post(
        "/chat",
        json={"model": "corp/m", "messages": MESSAGES, "options": {field: "x"}},
    )
    assert response.status_code == 400
    assert f"options.{field}" in response.json["error"]["message"]


def test_listed_model_ids_carry_each_rows_prefix_so_they_route(make_app, upstream):
    """opencode_go's prefix is opencode-go/: an id listed as opencode_go/... would
    route to the local Ollama."""
    upstream.get("http://opencode.test/zen/go/v1/models", json={"data": [{"id": "glm-5.1"}]})
    app = make_app(environ={"OPENCODE_API_KEY": "k"}, disabled_providers=("opencode",))
    upstream.get("http://ollama.test/api/tags", json={"models": []})
    client = app.test_client()
    ids = [m["id"] for m in client.get("/v1/models").json["data"]]
    assert ids == ["opencode-go/glm-5.1"]
    router = app.extensions["chatd"].registry.router
    assert router.resolve(ids[0]) == Route("opencode_go", "glm-5.1")
    assert client.get("/v1/models/opencode-go/glm-5.1").status_code == 200
    tags = [m["name"] for m in client.get("/api/tags").json["models"]]
    assert "opencode-go/glm-5.1" in tags


def test_a_burst_of_listings_asks_each_provider_once(make_app, upstream):
    import threading

    upstream.get("http://ollama.test/api/tags", json={"models": [{"name": "llama3.2"}]})
    app = make_app(environ={})
    registry = app.extensions["chatd"].registry
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(registry.list_models())) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 8 and all(r == results[0] for r in results)
    assert len(upstream.calls) == 1
