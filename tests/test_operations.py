"""Operations, for real: auth, request ids, logs, Server-Timing, metrics, restarts.

A gunicorn with two workers, JSON logs and two valid tokens serves most tests;
the restart tests start a chatd of their own, since they stop or reload it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import TEST_KEYS
from tests.live import (
    chatd_cli,
    clean_env,
    free_port,
    provider_urls,
    run_chatd,
    write_config,
)

MESSAGES = [{"role": "user", "content": "hi"}]
TOKENS = ("token-old-8f3a1c", "token-new-2b7d9e")
AUTH = {"Authorization": f"Bearer {TOKENS[1]}"}


def config(path, fakes, **extra):
    write_config(path, timeout_secs=5.0, threads=8, **provider_urls(fakes), **extra)
    return path


@pytest.fixture(scope="module")
def live(fakes, tmp_path_factory):
    path = config(
        tmp_path_factory.mktemp("ops") / "chatd.toml", fakes, log_format="json", trusted_proxies=1
    )
    with open(path, "a") as f:
        f.write('\n[auth]\ntoken_env = "CHATD_TEST_TOKENS"\n')
    env = clean_env(**TEST_KEYS, CHATD_TEST_TOKENS=",".join(TOKENS))
    with run_chatd(path, env, workers=2) as chatd:
        yield chatd


def post(live, model="llama3.2", headers=AUTH, **extra):
    return requests.post(
        live.url + "/chat",
        json={"model": model, "messages": MESSAGES, **extra},
        headers=headers,
        timeout=10,
    )


def log_lines(live) -> list[dict]:
    lines = []
    for line in live.log_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


# -- inbound auth ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKENS[0]}"}],
    ids=["none", "wrong token", "wrong scheme"],
)
def test_calls_without_a_valid_token_are_401(live, headers):
    for path in ("/chat/providers", "/metrics", "/v1/models"):
        response = requests.get(live.url + path, headers=headers, timeout=5)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["error"]["type"] == "unauthorized"
    assert post(live, headers=headers).status_code == 401


def test_either_token_works_so_keys_can_rotate(live):
    for token in TOKENS:
        assert post(live, headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_health_needs_no_token(live):
    assert requests.get(live.url + "/health", timeout=5).status_code == 200


def test_no_token_or_key_reaches_the_log(live):
    post(live, headers={"Authorization": "Bearer wrong-token-xyz"})
    post(live, model="kimi/k")
    text = live.log_text()
    for secret in (*TOKENS, "wrong-token-xyz", *TEST_KEYS.values()):
        assert secret not in text


# -- request ids, logs, Server-Timing ---------------------------------------------


def test_request_id_is_echoed_forwarded_and_logged(live, fakes):
    response = post(live, headers={**AUTH, "X-Request-ID": "trace-42.a:b"})
    assert response.headers["X-Request-ID"] == "trace-42.a:b"
    assert fakes["ollama"].chat_requests()[-1].headers["X-Request-ID"] == "trace-42.a:b"
    time.sleep(0.1)
    lines = [line for line in log_lines(live) if line.get("request_id") == "trace-42.a:b"]
    access = [line for line in lines if line["logger"] == "chatd.access"]
    assert len(access) == 1
    assert access[0]["status"] == 200 and access[0]["provider"] == "ollama"
    assert access[0]["prompt_tokens"] == 7 and access[0]["completion_tokens"] == 3


@pytest.mark.parametrize("given", ["x" * 129, "bad id with spaces", "<script>"])
def test_unsafe_request_ids_are_replaced(live, given):
    response = post(live, headers={**AUTH, "X-Request-ID": given})
    assert response.headers["X-Request-ID"] != given
    assert len(response.headers["X-Request-ID"]) == 32  # a new one


def test_error_bodies_carry_the_request_id(live):
    response = post(live, model="", headers={**AUTH, "X-Request-ID": "err-1"})
    assert response.status_code == 400
    assert response.json()["error"]["request_id"] == "err-1"


def test_every_log_line_is_json_with_a_request_id(live, fakes):
    fakes["openrouter"].behave("status", status=503, body={"error": {"message": "busy"}})
    post(live, model="openrouter/a/b", headers={**AUTH, "X-Request-ID": "retry-1"})
    time.sleep(0.1)
    lines = [line for line in log_lines(live) if line.get("request_id") == "retry-1"]
    assert any("retry 1/1" in line.get("message", "") for line in lines)
    access = [line for line in lines if line["logger"] == "chatd.access"][0]
    assert access["retries"] == 1 and access["status"] == 502


def access_line(live, request_id: str) -> dict:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # a stream's line is written when it closes
        lines = [line for line in log_lines(live) if line.get("request_id") == request_id]
        access = [line for line in lines if line["logger"] == "chatd.access"]
        if access:
            return access[-1]
        time.sleep(0.05)
    raise AssertionError(f"no access line for {request_id}")


@pytest.mark.parametrize(
    "behaviour, end",
    [({}, "done"), ({"error_after": 1}, "error:upstream_error")],
    ids=["finished", "cut"],
)
def test_a_streams_access_line_says_how_it_ended(live, fakes, behaviour, end):
    fakes["ollama"].behave("ok", pieces=["a", "b"], **behaviour)
    request_id = f"stream-{end}"
    response = post(live, stream=True, headers={**AUTH, "X-Request-ID": request_id})
    assert response.status_code == 200  # a stream's status is sent before it can fail
    access = access_line(live, request_id)
    assert access["stream"] is True and access["stream_end"] == end
    assert access["status"] == 200
    fakes["ollama"].behave("ok")


def test_a_stream_the_client_left_is_logged_as_client_gone(live, fakes):
    # Slow pieces, so the client is gone long before the stream could finish.
    fakes["ollama"].behave("ok", pieces=["a"] * 40, interval=0.1)
    request_id = "stream-client-gone"
    response = requests.post(
        live.url + "/chat",
        json={"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={**AUTH, "X-Request-ID": request_id},
        stream=True,
        timeout=10,
    )
    assert response.status_code == 200
    next(response.iter_content(chunk_size=None))  # the first piece, then hang up
    response.close()
    access = access_line(live, request_id)
    assert access["stream"] is True and access["stream_end"] == "client_gone"
    fakes["ollama"].behave("ok")


def test_client_address_comes_through_the_trusted_proxy(live):
    post(live, headers={**AUTH, "X-Forwarded-For": "198.51.100.7", "X-Request-ID": "xff-1"})
    time.sleep(0.1)
    access = [line for line in log_lines(live) if line.get("request_id") == "xff-1"][-1]
    assert access["client"] == "198.51.100.7"


def test_server_timing_says_where_the_time_went(live):
    timing = post(live).headers["Server-Timing"]
    parts = dict(part.strip().split(";dur=") for part in timing.split(","))
    assert set(parts) == {"upstream", "chatd"}
    assert float(parts["upstream"]) > 0 and float(parts["chatd"]) >= 0


# -- metrics -----------------------------------------------------------------------


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_every_worker(live):
    def scrape():
        return requests.get(live.url + "/metrics", headers=AUTH, timeout=5).text

    before = scrape()
    for _ in range(20):  # two workers share these
        assert post(live, model="kimi/k2").status_code == 200
    after = scrape()
    labels = {"route": "/chat", "provider": "kimi", "status": "200"}
    assert (
        metric(after, "chatd_requests_total", **labels)
        - metric(before, "chatd_requests_total", **labels)
        == 20
    )
    tokens = {"provider": "kimi", "model": "kimi/k2", "direction": "in"}
    assert (
        metric(after, "chatd_tokens_total", **tokens)
        - metric(before, "chatd_tokens_total", **tokens)
        == 20 * 11
    )
    assert metric(after, "chatd_overhead_seconds_count") >= 20
    assert metric(after, "chatd_upstream_latency_seconds_count", provider="kimi") >= 20
    assert "chatd_in_flight" in after and "chatd_provider_cooldown" in after


def test_model_labels_are_bounded(make_app, upstream):
    import responses

    from chatd.metrics import MAX_MODELS

    app = make_app()
    upstream.add(
        responses.POST,
        "http://ollama.test/api/chat",
        json={
            "message": {"role": "assistant", "content": "x"},
            "done": True,
            "prompt_eval_count": 1,
            "eval_count": 1,
        },
    )
    client = app.test_client()
    for i in range(MAX_MODELS + 30):
        client.post("/chat", json={"model": f"ollama/m{i}", "messages": MESSAGES})
    text = client.get("/metrics").text
    models = {
        line.split('model="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("chatd_tokens_total{")
    }
    assert len(models) == MAX_MODELS + 1 and "other" in models


# -- restarts and start-up ---------------------------------------------------------------


def test_sigterm_lets_calls_and_streams_in_flight_finish(fakes, tmp_path):
    path = config(tmp_path / "chatd.toml", fakes)
    fakes["openrouter"].behave("hang", delay=1.5)
    fakes["ollama"].behave("ok", pieces=list("abcdef"), interval=0.25)
    with run_chatd(path, clean_env(**TEST_KEYS)) as chatd:
        results = {}

        def call():
            results["call"] = requests.post(
                chatd.url + "/chat",
                json={"model": "openrouter/a/b", "messages": MESSAGES},
                timeout=10,
            )

        def stream():
            response = requests.post(
                chatd.url + "/chat",
                json={"model": "llama3.2", "messages": MESSAGES, "stream": True},
                stream=True,
                timeout=10,
            )
            results["stream"] = response.content

        threads = [threading.Thread(target=call), threading.Thread(target=stream)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        chatd.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(10)
        assert results["call"].status_code == 200
        assert results["stream"].endswith(b"data: [DONE]\n\n")
        assert chatd.process.wait(10) == 0


def test_sighup_reloads_config_and_keys(fakes, tmp_path):
    path = config(tmp_path / "chatd.toml", fakes)
    key_file = tmp_path / ".env"
    env = clean_env(**{k: v for k, v in TEST_KEYS.items() if k != "KIMI_API_KEY"})
    with run_chatd(path, env) as chatd:
        providers = requests.get(chatd.url + "/chat/providers", timeout=5).json()["providers"]
        assert "kimi" not in providers and "opencode" in providers
        key_file.write_text("KIMI_API_KEY=from-the-file\n")
        with open(path, "a") as f:
            f.write(f'kimi_key_file = "{key_file}"\ndisabled_providers = ["opencode"]\n')
        chatd.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            providers = requests.get(chatd.url + "/chat/providers", timeout=5).json()["providers"]
            if "kimi" in providers and providers.get("opencode") is False:
                break
            time.sleep(0.2)
        assert providers["kimi"] is True and providers["opencode"] is False


def test_no_tokens_refuses_a_non_loopback_bind(tmp_path):
    path = write_config(tmp_path / "chatd.toml")
    result = chatd_cli("--config", str(path), "--bind", f"0.0.0.0:{free_port()}", env=clean_env())
    assert result.returncode != 0
    assert "0.0.0.0" in result.stderr and "[auth]" in result.stderr


def test_check_config_shows_fingerprints_never_keys(tmp_path):
    path = write_config(tmp_path / "chatd.toml")
    result = chatd_cli("check-config", "--config", str(path), env=clean_env(**TEST_KEYS))
    assert result.returncode == 0
    assert "key from env KIMI_API_KEY (sha256:" in result.stdout
    for key in TEST_KEYS.values():
        assert key not in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[chatd]\nretries = -1\n")
    result = chatd_cli("check-config", "--config", str(bad), env=clean_env())
    assert result.returncode == 1 and "retries" in result.stderr


def test_version_is_chatds_not_gunicorns():
    from chatd import __version__

    result = chatd_cli("--version", env=clean_env())
    assert result.returncode == 0
    assert result.stdout.strip() == f"chatd {__version__}"


def test_make_run_installs_only_what_serving_needs(tmp_path):
    # On a fresh machine (no venv yet), `make run` plans chatd's install alone.
    root = Path(__file__).resolve().parent.parent
    venv = tmp_path / "venv"
    plan = subprocess.run(
        ["make", "-n", "run", f"VENV={venv}"], cwd=root, capture_output=True, text=True, timeout=30
    )
    assert plan.returncode == 0, plan.stderr
    assert "pip install --quiet -e .\n" in plan.stdout
    assert "[test" not in plan.stdout and "lint" not in plan.stdout
    plan = subprocess.run(
        ["make", "-n", "test", f"VENV={venv}"], cwd=root, capture_output=True, text=True, timeout=30
    )
    assert "-e '.[test]'" in plan.stdout and "lint" not in plan.stdout
