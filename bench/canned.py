"""Canned upstream answers and request bodies for chatd's benchmark.

Shared by run.py (which puts the answers into nginx's config) and upstream.py.
The answers have the fields and about the size of real ones (Ollama's
``/api/chat``, OpenAI's ``chat.completion``), so chatd decodes, translates and
re-encodes what it would in production. Stdlib only: upstream.py imports it.
"""

from __future__ import annotations

import json

MODEL = "llama3.2"
CONTENT = (
    "The sky looks blue because the molecules of the air scatter the short, blue "
    "wavelengths of sunlight far more strongly than the long, red ones, an effect called "
    "Rayleigh scattering. That scattered blue light reaches our eyes from every direction, "
    "so the whole sky seems to glow blue; at sunset the light crosses more air, the blue is "
    "scattered away before it reaches us, and the reds and oranges are what is left."
)
MESSAGES = [
    {"role": "system", "content": "You are a concise assistant. Answer in plain prose."},
    {"role": "user", "content": "Why is the sky blue? Answer in two or three sentences."},
]
CREATED_AT = "2025-11-25T04:58:11.482211383Z"
# Ollama's counters: tokens, and durations in nanoseconds.
STATS = {
    "total_duration": 4935886791,
    "load_duration": 534986708,
    "prompt_eval_count": 38,
    "prompt_eval_duration": 107345000,
    "eval_count": 71,
    "eval_duration": 4289432000,
}

OLLAMA_ANSWER = {
    "model": MODEL,
    "created_at": CREATED_AT,
    "message": {"role": "assistant", "content": CONTENT},
    "done": True,
    "done_reason": "stop",
    **STATS,
}

OPENAI_ANSWER = {
    "id": "gen-1764046691-kD3sJx8Qm2nV7pLwYb4T",
    "object": "chat.completion",
    "created": 1764046691,
    "model": "meta-llama/llama-3-8b-instruct",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": CONTENT},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 38, "completion_tokens": 71, "total_tokens": 109},
}


def compact(data) -> bytes:
    """JSON as upstreams send it: no spaces."""
    return json.dumps(data, separators=(",", ":")).encode()


def ollama_stream(pieces: int) -> list[bytes]:
    """The NDJSON lines of a streamed Ollama answer: ``pieces`` content lines, then "done"."""
    words = CONTENT.split(" ")
    if not 1 <= pieces <= len(words):
        raise ValueError(f"pieces must be 1 to {len(words)}")
    lines = []
    for i in range(pieces):
        # Even boundaries, so every piece has at least one word.
        text = " ".join(words[i * len(words) // pieces : (i + 1) * len(words) // pieces])
        piece = {
            "model": MODEL,
            "created_at": CREATED_AT,
            "message": {"role": "assistant", "content": (" " if i else "") + text},
            "done": False,
        }
        lines.append(compact(piece) + b"\n")
    last = {
        "model": MODEL,
        "created_at": CREATED_AT,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        **STATS,
    }
    lines.append(compact(last) + b"\n")
    return lines
