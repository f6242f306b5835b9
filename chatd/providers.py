"""chatd.providers ~~~ The five upstream vendors, as data.

A vendor differs from another in its base URL, its key, its probe and which
wire format it speaks; that is one row here. How a wire format is spoken is
code, in :mod:`chatd.adapters` (one class per format, not per vendor).
Settings fields follow the names ``<name>_url``, ``<name>_key_env`` and
``<name>_key_file`` (see :mod:`chatd.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    #: Wire format: "ollama" (native /api/chat, NDJSON) or "openai" (/chat/completions, SSE).
    wire: str
    default_url: str
    #: Env var the vendor documents for its key; None for a provider that needs no key.
    default_key_env: str | None
    #: Cheap GET whose success means "up"; None = available whenever registered.
    probe_path: str | None = None
    human_name: str = ""
    #: Built-in values for this provider of chatd.config.POLICY_FIELDS; an
    #: explicit [chatd] value or a [chatd.providers.<name>] one wins.
    defaults: dict = field(default_factory=dict)


KNOWN_PROVIDERS: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
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
        ),
        ProviderSpec(
            "openrouter",
            "openai",
            "https://openrouter.ai/api/v1",
            "OPENROUTER_API_KEY",
            human_name="OpenRouter",
        ),
        ProviderSpec(
            "opencode",
            "openai",
            "https://opencode.ai/zen/v1",
            "OPENCODE_API_KEY",
            human_name="OpenCode Zen",
        ),
        ProviderSpec(
            "kimi",
            "openai",
            "https://api.kimi.com/coding/v1",
            "KIMI_API_KEY",
            human_name="Kimi For Coding",
        ),
    )
}
