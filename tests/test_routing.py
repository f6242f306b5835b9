"""resolve_model: the routing table of README.md, row by row."""

from __future__ import annotations

import pytest

from chatd.errors import BadRequest
from chatd.routing import Route, resolve_model, strip_cloud_suffix


@pytest.mark.parametrize(
    "name, provider, upstream_model",
    [
        # ollama/<m>: the rest as is, slashes and colons included
        ("ollama/llama3.2", "ollama", "llama3.2"),
        ("ollama/hf.co/org/model:Q4", "ollama", "hf.co/org/model:Q4"),
        # a known prefix wins over the :cloud suffix
        ("ollama/x:cloud", "ollama", "x:cloud"),
        # ollama_cloud/<m>: a :cloud tag or a -cloud tag suffix removed
        ("ollama_cloud/gpt-oss:120b-cloud", "ollama_cloud", "gpt-oss:120b"),
        ("ollama_cloud/glm-4.6:cloud", "ollama_cloud", "glm-4.6"),
        ("ollama_cloud/gpt-oss:120b", "ollama_cloud", "gpt-oss:120b"),
        ("ollama_cloud/deepseek-v3.1:671b", "ollama_cloud", "deepseek-v3.1:671b"),
        # <m>:cloud with no known prefix
        ("glm-4.6:cloud", "ollama_cloud", "glm-4.6"),
        ("qwen3-coder:480b:cloud", "ollama_cloud", "qwen3-coder:480b"),
        # openrouter/<vendor>/<m>
        ("openrouter/anthropic/claude-sonnet-4.5", "openrouter", "anthropic/claude-sonnet-4.5"),
        ("openrouter/openrouter/auto", "openrouter", "openrouter/auto"),
        ("openrouter/meta-llama/llama-3.3:free", "openrouter", "meta-llama/llama-3.3:free"),
        ("openrouter/x/y:cloud", "openrouter", "x/y:cloud"),
        # opencode/<m>, kimi/<m>
        ("opencode/glm-5.1", "opencode", "glm-5.1"),
        ("kimi/kimi-for-coding", "kimi", "kimi-for-coding"),
        # opencode-go/<m>: the OpenCode Go catalogue (a prefix that is not opencode/)
        ("opencode-go/glm-5.1", "opencode_go", "glm-5.1"),
        # anything else: the local Ollama, the whole name
        ("llama3.2", "ollama", "llama3.2"),
        ("qwen2.5:7b", "ollama", "qwen2.5:7b"),
        ("gpt-oss:120b-cloud", "ollama", "gpt-oss:120b-cloud"),
        ("mistral/foo", "ollama", "mistral/foo"),
        ("Kimi/upper-case-is-not-a-prefix", "ollama", "Kimi/upper-case-is-not-a-prefix"),
    ],
)
def test_routes(name, provider, upstream_model):
    assert resolve_model(name) == Route(provider, upstream_model)


@pytest.mark.parametrize(
    "name",
    [
        "ollama/",
        "kimi/",
        "opencode/",
        "opencode-go/",
        "ollama_cloud/",
        "ollama_cloud/:cloud",
        ":cloud",
        "openrouter/",
        "openrouter/vendor-only",
        "openrouter/vendor/",
    ],
)
def test_a_prefix_with_no_model_is_a_bad_request(name):
    with pytest.raises(BadRequest) as raised:
        resolve_model(name)
    assert "model" in str(raised.value)


@pytest.mark.parametrize(
    "model, base",
    [
        ("glm-4.6:cloud", "glm-4.6"),
        ("gpt-oss:120b-cloud", "gpt-oss:120b"),
        ("gpt-oss:120b", "gpt-oss:120b"),
        ("no-tag-cloud", "no-tag-cloud"),  # -cloud counts only inside a tag
        ("org/model:tag/x-cloud", "org/model:tag/x-cloud"),  # a tag has no '/'
    ],
)
def test_strip_cloud_suffix_follows_ollama(model, base):
    assert strip_cloud_suffix(model) == base
