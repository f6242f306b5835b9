"""The error table, row by row: status, type, and a JSON body on every non-2xx."""

from __future__ import annotations

import logging

import pytest
import requests
import responses

from tests.conftest import TEST_KEYS

MESSAGES = [{"role": "user", "content": "hi"}]
OLLAMA = "http://ollama.test/api/chat"
KIMI = "http://kimi.test/coding/v1/chat/completions"


def chat(client, model="llama3.2", **extra):
    return client.post("/chat", json={"model": model, "messages": MESSAGES, **extra})


def error(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"}
    assert {"type", "message", "code", "request_id"} <= set(body["error"])
    return body["error"]


@pytest.mark.parametrize(
    "data, field",
    [(b"{", "JSON"), (b"[1]", "object"), (b'{"messages": []}', "model"), (b"", "empty")],
)
def test_bad_input_is_400_naming_the_problem(client, data, field):
    response = client.post("/chat", data=data, content_type="application/json")
    assert response.status_code == 400
    assert error(response)["type"] == "invalid_request"
    assert field in error(response)["message"]


def test_a_body_over_the_limit_is_413(make_app):
    client = make_app(max_request_bytes=1000).test_client()
    response = client.post("/chat", data=b"x" * 2000, content_type="application/json")
    assert response.status_code == 413
    assert error(response)["type"] == "request_too_large"
    assert "1000" in error(response)["message"]


def test_an_unregistered_provider_is_404_naming_the_env_var(make_app):
    response = chat(make_app(environ={}).test_client(), "kimi/k")
    assert response.status_code == 404
    assert error(response)["type"] == "provider_not_found"
    assert "kimi" in error(response)["message"] and "KIMI_API_KEY" in error(response)["message"]


def test_a_disabled_provider_is_503(make_app):
    response = chat(make_app(disabled_providers=("kimi",)).test_client(), "kimi/k")
    assert response.status_code == 503
    assert error(response)["type"] == "provider_disabled"
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(
    "mock, status, kind",
    [
        ({"body": requests.ConnectionError("refused")}, 502, "upstream_error"),
        ({"body": requests.exceptions.ReadTimeout()}, 504, "upstream_timeout"),
        ({"body": requests.exceptions.ConnectTimeout()}, 504, "upstream_timeout"),
        ({"status": 500, "json": {"error": "boom"}}, 502, "upstream_error"),
        ({"body": "<html>oops</html>"}, 502, "upstream_error"),
        ({"json": {"foo": 1}}, 502, "upstream_error"),
        ({"json": {"error": "model crashed"}}, 502, "upstream_error"),
        ({"json": [1, 2]}, 502, "upstream_error"),
    ],
)
def test_upstream_failures(client, upstream, mock, status, kind):
    # (a retryable failure is retried once, against the same registered answer)
    upstream.add(responses.POST, OLLAMA, **mock)
    response = chat(client)
    assert response.status_code == status
    assert error(response)["type"] == kind


def test_upstream_error_text_is_passed_on_with_the_status(client, upstream):
    upstream.post(KIMI, status=401, json={"error": {"message": "invalid api key"}})
    response = chat(client, "kimi/k")
    assert response.status_code == 502
    message = error(response)["message"]
    assert "401" in message and "invalid api key" in message
    assert error(response)["upstream_status"] == 401


def test_upstream_error_text_is_trimmed(client, upstream):
    upstream.post(OLLAMA, status=400, json={"error": "x" * 5000})
    message = error(chat(client))["message"]
    assert 1024 <= len(message) < 1024 + 100


def test_upstream_429_keeps_its_retry_after(client, upstream):
    upstream.post(
        KIMI, status=429, json={"error": {"message": "slow down"}}, headers={"Retry-After": "30"}
    )
    response = chat(client, "kimi/k")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "30"
    assert error(response)["type"] == "rate_limited"


def test_unknown_route_and_wrong_method_are_json(client):
    response = client.get("/nowhere")
    assert response.status_code == 404 and error(response)["type"] == "not_found"
    response = client.get("/chat")
    assert response.status_code == 405 and error(response)["type"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_anything_else_is_500_with_nothing_internal(app, monkeypatch, caplog):
    dispatcher = app.extensions["chatd"].dispatcher

    def explode(*args, **kwargs):
        raise RuntimeError("secret internals at 0xdeadbeef")

    monkeypatch.setattr(dispatcher, "run", explode)
    with caplog.at_level(logging.ERROR):
        response = chat(app.test_client())
    assert response.status_code == 500
    assert error(response)["type"] == "internal"
    assert "secret" not in response.get_data(as_text=True)
    assert "secret internals" in caplog.text  # the traceback is logged, for operators


def test_no_key_in_bodies_logs_or_reprs(app, upstream, caplog):
    upstream.post(KIMI, status=401, json={"error": {"message": "bad key"}})
    with caplog.at_level(logging.DEBUG):
        body = chat(app.test_client(), "kimi/k").get_data(as_text=True)
    registry = app.extensions["chatd"].registry
    text = body + caplog.text + repr(registry.adapters) + repr(app.extensions["chatd"].settings)
    for key in TEST_KEYS.values():
        assert key not in text


def test_an_errors_headers_are_its_own_not_the_callers():
    from chatd.adapters.base import DONT_RETRY
    from chatd.errors import UpstreamError

    before = dict(DONT_RETRY)
    error = UpstreamError("rejected", headers=DONT_RETRY)
    error.headers["X-Chatd-Fallbacks"] = "kimi/k2, opencode/x"  # as the dispatcher does
    assert DONT_RETRY == before  # a later, unrelated answer must not carry it
