"""chatd.adapters ~~~ One adapter class per wire format, not per vendor."""

from chatd.adapters.base import ChatAdapter
from chatd.adapters.ollama_native import OllamaChatAdapter
from chatd.adapters.openai_compat import OpenAIChatAdapter

ADAPTERS: dict[str, type[ChatAdapter]] = {
    OllamaChatAdapter.wire: OllamaChatAdapter,
    OpenAIChatAdapter.wire: OpenAIChatAdapter,
}

__all__ = ["ADAPTERS", "ChatAdapter", "OllamaChatAdapter", "OpenAIChatAdapter"]
