"""chatd.providers ~~~ The upstream vendors, as data.

A vendor differs from another in its model prefix, base URL, key, how the key
is sent, its probe and which wire format it speaks (one for all its models, or
one per model family); that is one row here. How a wire format is spoken is
code, in :mod:`chatd.adapters` (one class per format, not per vendor).

The rows below are the built-in vendors. ``[chatd.providers.<name>]`` in the
config changes a row's fields or declares a new row (:func:`declare`), and the
seed's flat keys (``<name>_url``, ``<name>_key_env``, ``<name>_key_file``)
still set the built-in rows' fields (see :mod:`chatd.config`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from chatd.errors import BadRequest

#: The wire formats chatd speaks (one class each in chatd.adapters).
WIRES = ("ollama", "openai", "anthropic", "responses")
#: How a key may be sent: Authorization: Bearer, Anthropic's x-api-key, or both.
AUTH_SCHEMES = ("bearer", "x-api-key", "both")
#: A wire rule naming a format chatd does not speak: "unsupported:<family>".
UNSUPPORTED = "unsupported:"
#: Where a model name with no known prefix (and no routing suffix) goes.
DEFAULT_PROVIDER = "ollama"


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


def require_vendor(model: str) -> str:
    """OpenRouter names models ``<vendor>/<model>``; a bare name is a 400, not an upstream 400."""
    if "/" not in model.strip("/"):
        raise BadRequest("OpenRouter models are named openrouter/<vendor>/<model>")
    return model


@dataclass(frozen=True)
class ProviderSpec:
    """One vendor: everything chatd needs to know to call it, as data."""

    name: str
    #: The wire format of its models (one of WIRES), unless a wire rule says otherwise.
    wire: str
    url: str
    #: Env var holding its key; None for a provider that needs no key.
    key_env: str | None
    #: A dotenv file consulted for key_env when the variable is empty.
    key_file: str = ""
    #: Model names starting with this go here; "" means "<name>/".
    prefix: str = ""
    #: How the key is sent (one of AUTH_SCHEMES).
    auth: str = "bearer"
    #: (glob on the upstream model id, wire) pairs, first match wins: for a vendor
    #: whose model families sit on different endpoints (OpenCode).
    wire_rules: tuple[tuple[str, str], ...] = ()
    #: Headers sent with every call to it (never a key: keys go by `auth`).
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Cheap GET whose success means "up"; None = available whenever registered.
    probe_path: str | None = None
    human_name: str = ""
    #: A model name with no known prefix that ends in this goes here, suffix removed.
    suffix: str = ""
    #: Checks or rewrites the upstream model id (a routing quirk of the vendor).
    model_rule: Callable[[str], str] | None = None
    #: Built-in values for this provider of chatd.config.POLICY_FIELDS; an
    #: explicit [chatd] value or a [chatd.providers.<name>] one wins.
    defaults: Mapping[str, float] = field(default_factory=dict)

    @property
    def model_prefix(self) -> str:
        return self.prefix or f"{self.name}/"

    def wire_for(self, model: str) -> str:
        """Return the wire format for upstream ``model``.

        :raises BadRequest: the model's family uses a format chatd does not speak.
        """
        # Model ids are lower case in every catalogue; a client's capitals are not a new family.
        lowered = model.lower()
        for pattern, wire in self.wire_rules:
            if fnmatch.fnmatchcase(lowered, pattern):
                if wire.startswith(UNSUPPORTED):
                    family = wire[len(UNSUPPORTED) :]
                    raise BadRequest(
                        f"model: {self.name} serves {family} models such as {model!r} in "
                        f"{family}'s own format at {self.url}, which chatd does not speak"
                    )
                return wire
        return self.wire

    def wires(self) -> list[str]:
        """Every wire format this provider may need, the default first."""
        found = [self.wire]
        for _, wire in self.wire_rules:
            if wire not in found and not wire.startswith(UNSUPPORTED):
                found.append(wire)
        return found


# OpenCode documents the endpoint per model family, and Go's table differs from
# Zen's (research/providers.md, 5.1, from opencode's zen.mdx and go.mdx).
# Anything not listed (GLM, Kimi, DeepSeek, MiniMax on Zen, Grok, Big Pickle,
# *-free, MiMo, Hy3) is on /chat/completions.
OPENCODE_ZEN_WIRES = (
    # The free models are all on /chat/completions, whatever their family.
    ("*-free", "openai"),
    ("gpt-*", "responses"),
    ("claude-*", "anthropic"),
    ("qwen3.5*", "anthropic"),
    ("qwen3.6*", "anthropic"),
    ("qwen3.7*", "anthropic"),
    ("gemini-*", UNSUPPORTED + "gemini"),
)
OPENCODE_GO_WIRES = (
    ("minimax-*", "anthropic"),
    ("qwen*", "anthropic"),
    ("grok-4.5*", "responses"),
    ("gpt-5.6-luna*", "responses"),
)

BUILTIN_PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec(
        "ollama",
        "ollama",
        "http://127.0.0.1:11434",
        None,
        probe_path="/api/version",
        human_name="local Ollama",
        defaults={
            # Loading a model from disk can take minutes before the first token.
            "first_token_timeout_secs": 300.0,
            # Loopback: a refused or slow connect means Ollama is down.
            "connect_timeout_secs": 2.0,
            # Ollama runs one request per model at a time by default
            # (OLLAMA_NUM_PARALLEL=1) and queues the rest; more in flight
            # only slows every call down, so the rest wait here, briefly.
            "max_in_flight": 4,
            "queue_timeout_secs": 30.0,
        },
    ),
    ProviderSpec(
        "ollama_cloud",
        "ollama",
        "https://ollama.com",
        "OLLAMA_API_KEY",
        # ollama.com is not known to serve /api/version; /api/tags it does.
        probe_path="/api/tags",
        human_name="Ollama Cloud",
        suffix=":cloud",
        model_rule=strip_cloud_suffix,
    ),
    ProviderSpec(
        "openrouter",
        "openai",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
        human_name="OpenRouter",
        model_rule=require_vendor,
    ),
    ProviderSpec(
        "opencode",
        "openai",
        "https://opencode.ai/zen/v1",
        "OPENCODE_API_KEY",
        human_name="OpenCode Zen",
        wire_rules=OPENCODE_ZEN_WIRES,
    ),
    ProviderSpec(
        "opencode_go",
        "openai",
        "https://opencode.ai/zen/go/v1",
        # The same console key serves both catalogs (research/providers.md, 5.1).
        "OPENCODE_API_KEY",
        prefix="opencode-go/",
        human_name="OpenCode Go",
        wire_rules=OPENCODE_GO_WIRES,
    ),
    ProviderSpec(
        "kimi",
        "openai",
        "https://api.kimi.com/coding/v1",
        "KIMI_API_KEY",
        human_name="Kimi For Coding",
    ),
)
KNOWN_PROVIDERS: dict[str, ProviderSpec] = {spec.name: spec for spec in BUILTIN_PROVIDERS}

#: What [chatd.providers.<name>] may set about the row itself (the policy fields aside).
ROW_FIELDS = ("url", "key_env", "key_file", "wire", "prefix", "auth", "headers", "wire_rules")


def declare(name: str, values: Mapping) -> ProviderSpec:
    """Return the row for ``name`` with ``values`` (checked by chatd.config) applied.

    A built-in name changes that row; any other name declares a new provider,
    which needs at least ``url`` and ``wire``. A declared provider with no
    ``key_env`` needs no key (a local vLLM or llama.cpp server, say).
    """
    row = {k: v for k, v in values.items() if k in ROW_FIELDS}
    if "wire_rules" in row:
        # A TOML table keeps its order: {"claude-*" = "anthropic", ...}.
        row["wire_rules"] = tuple(row["wire_rules"].items())
    base = KNOWN_PROVIDERS.get(name)
    if base is None:
        base = ProviderSpec(name, row.pop("wire"), row.pop("url"), row.pop("key_env", None))
    return replace(base, **row)
