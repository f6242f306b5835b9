"""Shared fixtures: settings on unroutable hosts, the app, its client, a strict HTTP mock.

Every test starts with no provider key and no CHATD_* variable in the
environment, so a developer's real keys can never reach a test.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import responses

from chatd.app import create_app
from chatd.config import Settings

# Keys the tests hand to providers; the log and body checks look for them.
TEST_KEYS = {
    "OLLAMA_API_KEY": "test-ollama-cloud-key-0001",
    "OPENROUTER_API_KEY": "test-openrouter-key-0002",
    "OPENCODE_API_KEY": "test-opencode-key-0003",
    "KIMI_API_KEY": "test-kimi-key-0004",
}

# `.test` is reserved (RFC 2606): nothing real answers there.
TEST_URLS = {
    "ollama_url": "http://ollama.test",
    "ollama_cloud_url": "http://ollama-cloud.test",
    "openrouter_url": "http://openrouter.test/api/v1",
    "opencode_url": "http://opencode.test/zen/v1",
    "opencode_go_url": "http://opencode.test/zen/go/v1",
    "kimi_url": "http://kimi.test/coding/v1",
}


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch):
    for name in list(os.environ):
        if name.startswith("CHATD_") or name.endswith("_API_KEY"):
            monkeypatch.delenv(name)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def settings() -> Settings:
    return Settings(timeout_secs=5.0, connect_timeout_secs=2.0, threads=4, **TEST_URLS)


@pytest.fixture
def environ() -> dict[str, str]:
    """Where the app looks up keys: every cloud provider has one."""
    return dict(TEST_KEYS)


@pytest.fixture
def app(settings, environ):
    return create_app(settings, environ=environ)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_app(environ):
    """Build an app from settings overrides: ``make_app(disabled_providers=("kimi",))``."""

    def _make(environ=environ, **overrides):
        base = Settings(timeout_secs=5.0, connect_timeout_secs=2.0, threads=4, **TEST_URLS)
        return create_app(dataclasses.replace(base, **overrides), environ=environ)

    return _make


@pytest.fixture(scope="module")
def fakes():
    """One loopback fake upstream per provider, shared by a module's live tests."""
    from tests.live import fake_providers

    with fake_providers() as fakes:
        yield fakes


@pytest.fixture(autouse=True)
def _fakes_answer_normally(request):
    """Each live test starts with every fake answering normally (the last may not have)."""
    if "fakes" in request.fixturenames:
        for fake in request.getfixturevalue("fakes").values():
            fake.behave("ok")


@pytest.fixture
def upstream():
    """A strict HTTP mock: unmatched calls fail, and every registered call must happen."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def make_wire_adapter(adapter_class, provider: str, url: str):
    """An adapter of ``adapter_class`` on a plain session, each limit a different value."""
    from chatd.resilience import Policy
    from chatd.sessions import make_session

    policy = Policy(
        timeout=5.0,
        connect_timeout=1.0,
        first_token_timeout=4.0,
        idle_timeout=3.0,
        retries=0,
        retry_max_wait=2.0,
        cooldown_failures=5,
        cooldown=10.0,
        max_in_flight=4,
        queue_timeout=1.0,
    )
    return adapter_class(
        provider, url, make_session({}, 2), policy=policy, max_response_bytes=1 << 20
    )


def read_stream(adapter, request, upstream_model: str) -> list:
    """Open a stream over the adapter's real transport and read all its neutral events."""
    stream = adapter.open_stream(request, upstream_model)
    try:
        return list(stream)
    finally:
        stream.close()
