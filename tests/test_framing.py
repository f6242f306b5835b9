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
