"""Loopback fake upstreams that speak Anthropic Messages and OpenAI Responses.

Built on :class:`tests.fakes.FakeUpstream`, so they record requests and
misbehave the same ways (``behave(mode="status", status=529, ...)``,
``cut_after``, ``error_after``, ...). They answer like a model would:

- a request that offers tools and holds no tool result yet gets a call to its
  first tool with ``tool_arguments``; otherwise the text ``reply`` (streamed in
  ``pieces``);
- ``thinking`` (a string) adds a thinking block / reasoning summary first.

Shapes follow shared/research/anthropic-responses.md sections 1.5-1.7 and 2.2-2.3.
"""

from __future__ import annotations

import json

from tests.fakes import FakeUpstream

MODELS = {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}


def sse(kind: str, data: dict) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), json.dumps(data).encode())


def sse_stream(events) -> bytes:
    """Events that each name their ``type``, as one SSE body (Anthropic's and Responses')."""
    return b"".join(sse(event["type"], event) for event in events)


class _ModelFake(FakeUpstream):
    content_type = "text/event-stream"

    def __init__(self, reply: str = "hello", thinking: str = "", tool_arguments=None):
        super().__init__(reply)
        self.thinking = thinking
        self.tool_arguments = tool_arguments if tool_arguments is not None else {"city": "Paris"}

    def answer_get(self, handler, recorded):
        if recorded.path.endswith("/models"):
            return self.send(handler, 200, MODELS)
        return super().answer_get(handler, recorded)

    def tool_to_call(self, body: dict) -> str | None:
        """The name of the tool the "model" calls now, or None to answer in text."""
        raise NotImplementedError


class FakeAnthropic(_ModelFake):
    """Anthropic Messages: POST {base}/messages, GET {base}/models."""

    chat_path = "/messages"
    usage = {"input_tokens": 11, "cache_read_input_tokens": 2, "output_tokens": 5}

    def tool_to_call(self, body):
        answered = any(
            isinstance(m.get("content"), list)
            and any(b.get("type") == "tool_result" for b in m["content"])
            for m in body.get("messages", [])
        )
        tools = body.get("tools") or []
        return tools[0]["name"] if tools and not answered else None

    def chat_answer(self, body):
        content = []
        if self.thinking:
            content.append({"type": "thinking", "thinking": self.thinking, "signature": "c2ln"})
        tool = self.tool_to_call(body)
        if tool:
            content.append(
                {
                    "type": "tool_use",
                    "id": "toolu_fake1",
                    "name": tool,
                    "input": self.tool_arguments,
                }
            )
        else:
            content.append({"type": "text", "text": self.reply})
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": content,
            "stop_reason": "tool_use" if tool else "end_turn",
            "stop_sequence": None,
            "usage": self.usage,
        }

    def stream_events(self, body, pieces):
        start = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**self.usage, "output_tokens": 1},
        }
        events = [sse("message_start", {"type": "message_start", "message": start})]
        index = 0

        def block(kind: str, block: dict, deltas: list[dict]) -> None:
            nonlocal index
            events.append(
                sse(kind, {"type": "content_block_start", "index": index, "content_block": block})
            )
            for delta in deltas:
                data = {"type": "content_block_delta", "index": index, "delta": delta}
                events.append(sse("content_block_delta", data))
            events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
            index += 1

        if self.thinking:
            half = len(self.thinking) // 2
            block(
                "content_block_start",
                {"type": "thinking", "thinking": "", "signature": ""},
                [
                    {"type": "thinking_delta", "thinking": self.thinking[:half]},
                    {"type": "thinking_delta", "thinking": self.thinking[half:]},
                    {"type": "signature_delta", "signature": "c2ln"},
                ],
            )
        events.append(sse("ping", {"type": "ping"}))
        tool = self.tool_to_call(body)
        if tool:
            arguments = json.dumps(self.tool_arguments)
            half = len(arguments) // 2
            block(
                "content_block_start",
                {"type": "tool_use", "id": "toolu_fake1", "name": tool, "input": {}},
                [
                    {"type": "input_json_delta", "partial_json": ""},
                    {"type": "input_json_delta", "partial_json": arguments[:half]},
                    {"type": "input_json_delta", "partial_json": arguments[half:]},
                ],
            )
        else:
            block(
                "content_block_start",
                {"type": "text", "text": ""},
                [{"type": "text_delta", "text": p} for p in pieces],
            )
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": len(pieces)},
        }
        events.append(sse("message_delta", delta))
        events.append(sse("message_stop", {"type": "message_stop"}))
        return events

    def error_event(self, message):
        error = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
        return sse("error", error)


class FakeResponses(_ModelFake):
    """OpenAI Responses: POST {base}/responses, GET {base}/models."""

    chat_path = "/responses"
    usage = {
        "input_tokens": 13,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 6,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 19,
    }

    def tool_to_call(self, body):
        items = body.get("input")
        answered = isinstance(items, list) and any(
            i.get("type") == "function_call_output" for i in items
        )
        tools = body.get("tools") or []
        return tools[0]["name"] if tools and not answered else None

    def _response(self, body: dict, status: str, output: list, **extra) -> dict:
        return {
            "id": "resp_fake",
            "object": "response",
            "created_at": 1754000000,
            "status": status,
            "model": body.get("model"),
            "output": output,
            "error": None,
            "incomplete_details": None,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            **extra,
        }

    def _output(self, body: dict, text: str) -> list[dict]:
        output = []
        if self.thinking:
            summary = [{"type": "summary_text", "text": self.thinking}]
            output.append({"type": "reasoning", "id": "rs_fake", "summary": summary})
        tool = self.tool_to_call(body)
        if tool:
            output.append(
                {
                    "type": "function_call",
                    "id": "fc_fake",
                    "call_id": "call_fake1",
                    "name": tool,
                    "arguments": json.dumps(self.tool_arguments),
                    "status": "completed",
                }
            )
        else:
            part = {"type": "output_text", "text": text, "annotations": []}
            output.append(
                {
                    "type": "message",
                    "id": "msg_fake",
                    "role": "assistant",
                    "status": "completed",
                    "content": [part],
                }
            )
        return output

    def chat_answer(self, body):
        return self._response(body, "completed", self._output(body, self.reply), usage=self.usage)

    def stream_events(self, body, pieces):
        sequence = iter(range(1000))

        def event(kind: str, **data) -> bytes:
            return sse(kind, {"type": kind, "sequence_number": next(sequence), **data})

        events = [event("response.created", response=self._response(body, "in_progress", []))]
        output = self._output(body, "".join(pieces))
        for index, item in enumerate(output):
            if item["type"] == "reasoning":
                added = {**item, "summary": []}
                events.append(event("response.output_item.added", output_index=index, item=added))
                events.append(
                    event(
                        "response.reasoning_summary_text.delta",
                        item_id=item["id"],
                        output_index=index,
                        summary_index=0,
                        delta=self.thinking,
                    )
                )
            elif item["type"] == "function_call":
                added = {**item, "arguments": "", "status": "in_progress"}
                events.append(event("response.output_item.added", output_index=index, item=added))
                half = len(item["arguments"]) // 2
                for piece in (item["arguments"][:half], item["arguments"][half:]):
                    events.append(
                        event(
                            "response.function_call_arguments.delta",
                            item_id=item["id"],
                            output_index=index,
                            delta=piece,
                        )
                    )
            else:
                added = {**item, "content": [], "status": "in_progress"}
                events.append(event("response.output_item.added", output_index=index, item=added))
                for piece in pieces:
                    events.append(
                        event(
                            "response.output_text.delta",
                            item_id=item["id"],
                            output_index=index,
                            content_index=0,
                            delta=piece,
                            logprobs=[],
                        )
                    )
            events.append(event("response.output_item.done", output_index=index, item=item))
        done = self._response(body, "completed", output, usage=self.usage)
        events.append(event("response.completed", response=done))
        return events

    def error_event(self, message):
        failed = {
            "type": "response.failed",
            "response": {"status": "failed", "error": {"code": "server_error", "message": message}},
        }
        return sse("response.failed", failed)
