"""The stream framing generators, without HTTP."""

from __future__ import annotations

import pytest

from chatd.adapters.framing import BadEvent, StreamCut, iter_ndjson, iter_sse_events


def test_sse_skips_comments_and_event_lines_and_stops_at_done():
    lines = [
        b": OPENROUTER PROCESSING",
        b"",
        b"event: message",
        b'data: {"a": 1}',
        b"",
        b'data:{"a": 2}',
        b"data: [DONE]",
        b'data: {"choices": [], "cost": "0.1"}',  # Zen's trailer after [DONE]: never read
    ]
    assert list(iter_sse_events(lines)) == [{"a": 1}, {"a": 2}]


def test_sse_without_done_is_a_cut():
    events = iter_sse_events([b'data: {"a": 1}'])
    assert next(events) == {"a": 1}
    with pytest.raises(StreamCut):
        next(events)


@pytest.mark.parametrize("payload", [b"data: {not json", b"data: [1, 2]"])
def test_sse_garbage_is_a_bad_event(payload):
    with pytest.raises(BadEvent):
        list(iter_sse_events([payload]))


def test_ndjson_stops_after_done():
    lines = [b'{"n": 1, "done": false}', b"", b'{"n": 2, "done": true}', b'{"n": 3}']
    assert [e["n"] for e in iter_ndjson(lines)] == [1, 2]


def test_ndjson_without_done_is_a_cut():
    with pytest.raises(StreamCut):
        list(iter_ndjson([b'{"n": 1, "done": false}']))


def test_ndjson_garbage_is_a_bad_event():
    with pytest.raises(BadEvent):
        list(iter_ndjson([b"<html>"]))


def is_message_stop(event):
    return event.get("type") == "message_stop"


def test_sse_with_an_end_predicate_yields_the_end_event_then_stops():
    lines = [
        b"event: message_start",
        b'data: {"type": "message_start"}',
        b"",
        b"event: message_stop",
        b'data: {"type": "message_stop"}',
        b'data: {"type": "never read"}',
    ]
    assert list(iter_sse_events(lines, done=is_message_stop)) == [
        {"type": "message_start"},
        {"type": "message_stop"},
    ]


def test_sse_with_an_end_predicate_does_not_take_done_for_the_end():
    # [DONE] is not Anthropic's end: the stream still ended without message_stop.
    events = iter_sse_events([b'data: {"type": "ping"}', b"data: [DONE]"], done=is_message_stop)
    assert next(events) == {"type": "ping"}
    with pytest.raises(StreamCut, match="end event"):
        next(events)


def test_sse_with_an_end_predicate_and_no_end_is_a_cut():
    with pytest.raises(StreamCut):
        list(iter_sse_events([b'data: {"type": "message_start"}'], done=is_message_stop))
