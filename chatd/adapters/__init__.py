"""chatd.adapters ~~~ One adapter class per wire format, not per vendor."""

from chatd.adapters.anthropic import AnthropicChatAdapter
from chatd.adapters.base import ChatAdapter
from chatd.adapters.ollama_native import OllamaChatAdapter
from chatd.adapters.openai_compat import OpenAIChatAdapter
from chatd.adapters.responses import ResponsesChatAdapter

ADAPTERS: dict[str, type[ChatAdapter]] = {
    OllamaChatAdapter.wire: OllamaChatAdapter,
    OpenAIChatAdapter.wire: OpenAIChatAdapter,
    AnthropicChatAdapter.wire: AnthropicChatAdapter,
    ResponsesChatAdapter.wire: ResponsesChatAdapter,
}

__all__ = [
    "ADAPTERS",
    "AnthropicChatAdapter",
    "ChatAdapter",
    "OllamaChatAdapter",
    "OpenAIChatAdapter",
    "ResponsesChatAdapter",
]
