"""An upstream that answers with nonsense, and a relay path built to escape /api/.

Whatever an upstream puts in its JSON (a negative or textual token count, a
list where a finish reason belongs), the client gets a clean answer or a 502,
never a 500 and never a cut with no error event.
"""

from __future__ import annotations

import json

import pytest

OLLAMA_CHAT = "http://ollama.test/api/chat"
KIMI_CHAT = "http://kimi.test/coding/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def answer(route: str) -> dict:
    body = {"model": "llama3.2", "messages": HI, "max_tokens": 10, "stream": False}
    return {"/api/chat": {**body}, "/v1/messages": body, "/chat": body}[route]


@pytest.mark.parametrize("route", ["/chat", "/v1/messages", "/api/chat"])
@pytest.mark.parametrize("bad", [-5, "7", 2.5, [1], None])
def test_a_nonsense_token_count_counts_zero(client, upstream, route, bad):
    upstream.post(
        OLLAMA_CHAT,
        json={
            "message": {"role": "assistant", "content": "a"},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": bad,
            "eval_count": 3,
        },
    )
    response = client.post(route, json=answer(route))
    assert response.status_code == 200, response.get_data()[:300]
    # Ollama's answer carries a timestamp (…T19:58:22.58…Z) and durations that
    # may hold these digits by chance: only the token counts are looked at.
    counts = {
        name: value
        for name, value in _numbers(json.loads(response.get_data()))
        if "token" in name or name.endswith("_count")
    }
    assert counts and all(type(v) is int and v >= 0 for v in counts.values()), counts


def _numbers(data, name=""):
    """(key, value) for every number in a JSON document, nested or not."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _numbers(value, key)
    elif isinstance(data, list):
        for value in data:
            yield from _numbers(value, name)
    elif isinstance(data, int | float) and not isinstance(data, bool):
        yield name, data


@pytest.mark.parametrize("route", ["/chat", "/v1/chat/completions", "/v1/messages", "/api/chat"])
def test_a_finish_reason_that_is_no_string_is_a_502(client, upstream, route):
    upstream.post(
        KIMI_CHAT,
        json={"choices": [{"message": {"role": "assistant", "content": "a"}, "finish_reason": {}}]},
    )
    body = {**answer("/chat"), "model": "kimi/k2"}
    response = client.post(route, json=body)
    assert response.status_code == 502, response.get_data()[:300]


def sse(*events) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + (
        b"data: [DONE]\n\n"
    )


@pytest.mark.parametrize(
    "route, error_mark",
    [
        ("/chat", b"event: error"),
        ("/v1/chat/completions", b"event: error"),
        ("/v1/messages", b"event: error"),
        ("/api/chat", b'"error"'),
    ],
)
def test_a_stream_piece_of_the_wrong_shape_ends_in_an_error_event(
    client, upstream, route, error_mark
):
    upstream.post(
        KIMI_CHAT,
        body=sse(
            {"choices": [{"delta": {"content": "a"}}]},
            {"choices": [{"delta": {"tool_calls": [{"index": [], "function": {}}]}}]},
        ),
        content_type="text/event-stream",
    )
    body = {**answer("/chat"), "model": "kimi/k2", "stream": True}
    response = client.post(route, json=body)
    assert response.status_code == 200
    data = response.get_data()
    assert error_mark in data
    assert b"[DONE]" not in data and b"message_stop" not in data and b'"done":true' not in data


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/%2e%2e/%2e%2e/secret"),
        ("GET", "/api/x/../../admin"),
        ("POST", "/api/chat/"),
        ("POST", "/api/./chat"),
    ],
)
def test_the_relay_never_leaves_api_nor_goes_around_chatds_own_routes(client, method, path):
    # The strict mock has nothing registered: any upstream call would fail the test.
    response = client.open(path, method=method, json={})
    assert response.status_code in (404, 405), response.get_data()[:300]


def test_the_relay_passes_every_query_value_and_turns_an_upstream_500_into_a_502(client, upstream):
    from responses import matchers

    upstream.get(
        "http://ollama.test/api/ps",
        json={"error": "boom"},
        status=500,
        match=[matchers.query_string_matcher("x=1&x=2")],
    )
    response = client.get("/api/ps?x=1&x=2")
    assert response.status_code == 502
    assert response.json == {"error": "boom"}
