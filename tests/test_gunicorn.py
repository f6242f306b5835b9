"""chatd for real: gunicorn on loopback, in front of the tests' own fake upstreams.

One gunicorn (2 workers, via the `chatd` console script and the shipped
gunicorn.conf.py) serves the whole module; each fake stands in for one provider.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests

from chatd import __version__
from tests.conftest import TEST_KEYS
from tests.live import ROOT, chatd_cli, clean_env, provider_urls, run_chatd, write_config

TIMEOUT_SECS = 2.0
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def live(fakes, tmp_path_factory):
    config = write_config(
        tmp_path_factory.mktemp("live") / "chatd.toml",
        timeout_secs=TIMEOUT_SECS,
        connect_timeout_secs=1.0,
        max_request_bytes=64 * 1024,
        threads=8,
        **provider_urls(fakes),
    )
    with run_chatd(config, clean_env(**TEST_KEYS), workers=2) as chatd:
        yield chatd


def chat(live, model, **extra):
    return requests.post(
        live.url + "/chat", json={"model": model, "messages": MESSAGES, **extra}, timeout=10
    )


@pytest.mark.parametrize(
    "model, provider, upstream_model, path, reply",
    [
        ("llama3.2", "ollama", "llama3.2", "/api/chat", "from local ollama"),
        ("ollama/hf.co/org/m:Q4", "ollama", "hf.co/org/m:Q4", "/api/chat", "from local ollama"),
        ("glm-4.6:cloud", "ollama_cloud", "glm-4.6", "/api/chat", "from ollama cloud"),
        (
            "ollama_cloud/gpt-oss:120b-cloud",
            "ollama_cloud",
            "gpt-oss:120b",
            "/api/chat",
            "from ollama cloud",
        ),
        (
            "openrouter/anthropic/claude-x",
            "openrouter",
            "anthropic/claude-x",
            "/api/v1/chat/completions",
            "from openrouter",
        ),
        ("opencode/glm-5.1", "opencode", "glm-5.1", "/zen/v1/chat/completions", "from opencode"),
        (
            "kimi/kimi-for-coding",
            "kimi",
            "kimi-for-coding",
            "/coding/v1/chat/completions",
            "from kimi",
        ),
    ],
)
def test_routes_to_provider_with_its_auth(
    live, fakes, model, provider, upstream_model, path, reply
):
    before = len(fakes[provider].requests)
    response = chat(live, model, temperature=0.2, max_tokens=9)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["provider"] == provider
    assert body["model"] == upstream_model
    assert body["message"] == {"role": "assistant", "content": reply}
    assert (
        body["usage"]["total_tokens"]
        == (body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"])
        > 0
    )
    assert isinstance(body["latency_ms"], int)

    sent = fakes[provider].requests[before:]
    assert [r.path for r in sent] == [path]
    assert sent[0].json["model"] == upstream_model
    assert sent[0].json["stream"] is False
    assert sent[0].headers["User-Agent"] == f"chatd/{__version__}"
    key_env = {
        "ollama_cloud": "OLLAMA_API_KEY",
        "openrouter": "OPENROUTER_API_KEY",
        "opencode": "OPENCODE_API_KEY",
        "kimi": "KIMI_API_KEY",
    }.get(provider)
    if key_env is None:
        assert "Authorization" not in sent[0].headers
    else:
        assert sent[0].headers["Authorization"] == f"Bearer {TEST_KEYS[key_env]}"


def test_providers_and_health(live):
    response = requests.get(live.url + "/chat/providers", timeout=5)
    assert response.status_code == 200
    assert response.json()["providers"] == {
        "ollama": True,
        "ollama_cloud": True,
        "openrouter": True,
        "opencode": True,
        "opencode_go": True,
        "kimi": True,
    }
    assert requests.get(live.url + "/health", timeout=5).json() == {"status": "ok"}


@pytest.mark.parametrize(
    "fake, model, mode, options",
    [
        ("openrouter", "openrouter/a/b", "hang", {"delay": TIMEOUT_SECS * 3}),
        # A byte every 0.2 s never trips a per-read timeout; only a total deadline stops it.
        ("ollama", "ollama/llama3.2", "drip", {"interval": 0.2, "size": 200}),
        # Headers a byte at a time: every read is in time, the head never ends.
        ("ollama", "ollama/llama3.2", "drip_head", {"interval": 0.2}),
    ],
    ids=["hang", "drip body", "drip headers"],
)
def test_slow_upstream_is_504_at_the_deadline(live, fakes, fake, model, mode, options):
    fakes[fake].behave(mode, **options)
    started = time.monotonic()
    response = chat(live, model)
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "upstream_timeout"
    assert TIMEOUT_SECS * 0.9 <= elapsed < TIMEOUT_SECS + 1.5
    fakes[fake].behave("ok")
    assert chat(live, model).status_code == 200


def test_upstream_reset_mid_body_is_502(live, fakes):
    fakes["kimi"].behave("reset")
    response = chat(live, "kimi/kimi-for-coding")
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"


def test_upstream_error_text_is_passed_on(live, fakes):
    fakes["ollama"].behave("status", status=404, body={"error": "model 'nope' not found"})
    response = chat(live, "nope")
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "404" in message and "model 'nope' not found" in message


def test_upstream_429_keeps_retry_after(live, fakes):
    fakes["opencode"].behave(
        "status",
        status=429,
        body={"type": "error", "error": {"type": "RateLimitError", "message": "slow down"}},
        headers={"Retry-After": "17"},
    )
    response = chat(live, "opencode/glm-5.1")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "17"
    assert "slow down" in response.json()["error"]["message"]


def test_chunked_body_over_the_limit_is_413(live):
    def body():
        yield b'{"model": "llama3.2", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}]}'

    response = requests.post(
        live.url + "/chat", data=body(), headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_content_length_over_the_limit_is_413(live):
    response = requests.post(live.url + "/chat", data=b"x" * (65 * 1024), timeout=10)
    assert response.status_code == 413


def test_pooled_connections_are_reused(live, fakes):
    fake = fakes["openrouter"]
    before = fake.connections
    for _ in range(20):
        assert chat(live, "openrouter/a/b").status_code == 200
    # Two workers, each with one pooled connection in a sequential run.
    assert fake.connections - before <= 2


def test_no_key_reaches_the_log(live):
    chat(live, "kimi/kimi-for-coding")
    log = live.log_text()
    assert "POST /chat 200 provider=kimi model=kimi/kimi-for-coding" in log
    for key in TEST_KEYS.values():
        assert key not in log


def test_bad_config_stops_startup_with_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[chatd]\ntimeout_secs = "soon"\n')
    result = chatd_cli("--config", str(config), env=clean_env())
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(config) in lines[0] and "timeout_secs" in lines[0]


def test_gunicorn_conf_directly_reports_a_bad_config(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[chatd]\ndisabled_providers = ["nobody"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--check-config"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
        env=clean_env(CHATD_CONFIG=str(config)),
    )
    assert result.returncode != 0
    assert "disabled_providers" in result.stderr and "nobody" in result.stderr
