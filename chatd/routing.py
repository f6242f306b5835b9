"""chatd.routing ~~~ Model name in, provider and upstream model id out.

A pure function over a small table, so it is tested as a table. A known prefix
wins over the ``:cloud`` suffix; anything else goes to the local Ollama.
"""

from __future__ import annotations

from typing import NamedTuple

from chatd.errors import BadRequest


class Route(NamedTuple):
    provider: str
    upstream_model: str


# Longest-first does not matter here (no prefix is a prefix of another), but
# keep `ollama/` last so it reads as the fallback it is.
PREFIXES = (
    ("ollama_cloud/", "ollama_cloud"),
    ("openrouter/", "openrouter"),
    ("opencode/", "opencode"),
    ("kimi/", "kimi"),
    ("ollama/", "ollama"),
)


def strip_cloud_suffix(model: str) -> str:
    """Remove a ``:cloud`` tag or a ``-cloud`` tag suffix, as Ollama's own name parser does.

    ``glm-4.6:cloud`` -> ``glm-4.6``; ``gpt-oss:120b-cloud`` -> ``gpt-oss:120b``.
    ollama.com's API knows its models only by the bare name.
    """
    base, colon, tag = model.rpartition(":")
    if not colon:
        return model
    if tag == "cloud":
        return base
    if tag.endswith("-cloud") and "/" not in tag:
        return f"{base}:{tag[: -len('-cloud')]}"
    return model


def resolve_model(name: str) -> Route:
    """Return the provider for model ``name`` and the model id to send it.

    :raises BadRequest: the name has a prefix but no model after it.
    """
    for prefix, provider in PREFIXES:
        if name.startswith(prefix):
            model = name[len(prefix) :]
            if provider == "ollama_cloud":
                model = strip_cloud_suffix(model)
            if not model:
                raise BadRequest(f"model: {name!r} names no model after the {prefix!r} prefix")
            if provider == "openrouter" and "/" not in model.strip("/"):
                raise BadRequest(
                    f"model: OpenRouter models are named openrouter/<vendor>/<model>, got {name!r}"
                )
            return Route(provider, model)
    if name.endswith(":cloud"):
        model = name[: -len(":cloud")]
        if not model:
            raise BadRequest("model: ':cloud' names no model")
        return Route("ollama_cloud", model)
    return Route("ollama", name)
