"""/health and /chat/providers through the Flask client."""

from __future__ import annotations

import requests

PROBE = "http://ollama.test/api/version"
CLOUD_PROBE = "http://ollama-cloud.test/api/tags"


def test_health_is_200_with_every_upstream_down(client):
    # The strict `upstream` mock is not active: any upstream call would fail loudly.
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_providers_lists_every_registered_provider(client, upstream):
    upstream.get(PROBE, json={"version": "0.12.0"})
    upstream.get(CLOUD_PROBE, json={"models": []})
    body = client.get("/chat/providers").get_json()
    assert body["providers"] == {
        "ollama": True,
        "ollama_cloud": True,
        "openrouter": True,
        "opencode": True,
        "opencode_go": True,
        "kimi": True,
    }
    assert body["unregistered"] == {}


def test_only_ollama_without_keys_and_it_says_what_to_set(make_app, upstream):
    upstream.get(PROBE, json={"version": "0.12.0"})
    body = make_app(environ={}).test_client().get("/chat/providers").get_json()
    assert body["providers"] == {"ollama": True}
    assert body["unregistered"]["kimi"] == "set KIMI_API_KEY"


def test_unreachable_ollama_and_disabled_providers_are_false(make_app, upstream):
    upstream.get(PROBE, body=requests.ConnectionError("refused"))
    app = make_app(environ={"KIMI_API_KEY": "k"}, disabled_providers=("kimi",))
    body = app.test_client().get("/chat/providers").get_json()
    assert body["providers"] == {"ollama": False, "kimi": False}
    assert body["status"]["ollama"]["reason"] == "unreachable"
    assert body["status"]["kimi"]["reason"] == "disabled"


def test_probe_answers_are_cached(make_app, upstream):
    probe = upstream.get(PROBE, json={"version": "0.12.0"})
    client = make_app(environ={}).test_client()
    for _ in range(3):
        assert client.get("/chat/providers").get_json()["providers"]["ollama"] is True
    assert probe.call_count == 1


def test_providers_answers_like_chat_providers(make_app, upstream):
    # The seed's Go service named the route /providers.
    upstream.get(PROBE, json={"version": "0.12.0"})
    client = make_app(environ={}).test_client()
    assert client.get("/providers").get_json() == client.get("/chat/providers").get_json()


def test_v1_models_retrieve_answers_one_model(make_app, upstream):
    upstream.get("http://ollama.test/api/tags", json={"models": [{"name": "llama3.2:latest"}]})
    upstream.get("http://kimi.test/coding/v1/models", json={"data": [{"id": "moonshot/k2"}]})
    client = make_app(environ={"KIMI_API_KEY": "k"}).test_client()
    assert client.get("/v1/models/kimi/moonshot/k2").get_json() == {
        "id": "kimi/moonshot/k2",
        "object": "model",
        "created": 0,
        "owned_by": "kimi",
    }
    response = client.get("/v1/models/kimi/nothing")
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error["code"] == "model_not_found" and "kimi/nothing" in error["message"]
