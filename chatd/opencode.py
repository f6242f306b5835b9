"""chatd.opencode ~~~ Which wire format OpenCode Zen and Go speak for each model family.

OpenCode documents one endpoint per model family, and its Go plan has a table
of its own (shared/research/providers.md section 5.1, from OpenCode's
``zen.mdx`` and ``go.mdx``). The tables are data: ordered (glob, wire) rules
matched with :func:`fnmatch.fnmatchcase` against the lower-cased upstream model
id; the first match wins, and a model no rule names gets the default
(``/chat/completions``). ``unsupported:<family>`` marks a family whose format
chatd does not speak; the provider turns it into a 400 naming the family and
the endpoint. Operators may override a table in config when the catalog moves.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

ZEN_URL = "https://opencode.ai/zen/v1"
GO_URL = "https://opencode.ai/zen/go/v1"
DEFAULT_WIRE = "openai"
UNSUPPORTED = "unsupported:"

# providers.md 5.1, Zen: GPT on /responses; Claude and Qwen 3.5-3.7 on /messages;
# Gemini on Google's /models/<id>; GLM, Kimi, DeepSeek, MiniMax, Grok, Big Pickle
# and every *-free model on /chat/completions (the default).
ZEN_WIRES: tuple[tuple[str, str], ...] = (
    # Free models are listed on /chat/completions whatever their family: first.
    ("*-free", "openai"),
    ("gpt-*", "responses"),
    ("claude-*", "anthropic"),
    ("qwen3.[5-7]*", "anthropic"),
    ("gemini-*", "unsupported:gemini"),
)

# providers.md 5.1, Go: MiniMax and Qwen on /messages; Grok 4.5 and GPT 5.6 Luna on
# /responses; GLM, Kimi, DeepSeek, MiMo and Hy3 on /chat/completions (the default).
GO_WIRES: tuple[tuple[str, str], ...] = (
    ("minimax-*", "anthropic"),
    ("qwen*", "anthropic"),
    ("grok-4.5*", "responses"),
    ("gpt-5.6-luna*", "responses"),
    # Go lists no Gemini model; should one appear, it would still be Google's format.
    ("gemini-*", "unsupported:gemini"),
)


def wire_for(model: str, rules: tuple[tuple[str, str], ...], default: str = DEFAULT_WIRE) -> str:
    """Return the wire format of the first rule whose glob matches ``model``, else ``default``."""
    name = model.lower()
    for glob, wire in rules:
        if fnmatchcase(name, glob):
            return wire
    return default
