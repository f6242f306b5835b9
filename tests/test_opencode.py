"""The OpenCode Zen and Go model-family tables (providers.md section 5.1)."""

from __future__ import annotations

import pytest

from chatd.opencode import GO_WIRES, ZEN_WIRES, wire_for


@pytest.mark.parametrize(
    ("model", "wire"),
    [
        ("gpt-5.2", "responses"),
        ("gpt-5.1-codex", "responses"),
        ("claude-sonnet-4-6", "anthropic"),
        ("Claude-Opus-4-5", "anthropic"),  # ids are matched lower-cased
        ("qwen3.5-plus", "anthropic"),
        ("qwen3.7-max", "anthropic"),
        ("qwen3-coder", "openai"),  # only Qwen 3.5-3.7 are on /messages
        ("gemini-3-pro", "unsupported:gemini"),
        ("glm-5.1", "openai"),
        ("kimi-k2.6", "openai"),
        ("deepseek-v4-flash", "openai"),
        ("minimax-m2.5", "openai"),
        ("grok-code", "openai"),
        ("big-pickle", "openai"),
        ("gpt-5-nano-free", "openai"),  # *-free is on /chat/completions, first match wins
        ("something-new", "openai"),
    ],
)
def test_zen_table(model, wire):
    assert wire_for(model, ZEN_WIRES) == wire


@pytest.mark.parametrize(
    ("model", "wire"),
    [
        ("minimax-m2.7", "anthropic"),
        ("qwen3.6-plus", "anthropic"),
        ("qwen3-coder", "anthropic"),
        ("grok-4.5", "responses"),
        ("gpt-5.6-luna", "responses"),
        ("gpt-5.2", "openai"),  # Go puts only GPT 5.6 Luna on /responses
        ("glm-5.1", "openai"),
        ("kimi-k2.6", "openai"),
        ("deepseek-v4-flash", "openai"),
        ("mimo-v2-pro", "openai"),
        ("hy3", "openai"),
        ("gemini-3-flash", "unsupported:gemini"),
    ],
)
def test_go_table(model, wire):
    assert wire_for(model, GO_WIRES) == wire


def test_the_default_is_the_callers():
    assert wire_for("anything", (), default="anthropic") == "anthropic"
    assert wire_for("b-model", (("a-*", "responses"),), default="ollama") == "ollama"


def test_first_match_wins():
    rules = (("x-*", "anthropic"), ("x-1*", "responses"))
    assert wire_for("x-1", rules) == "anthropic"
