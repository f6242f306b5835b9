"""chatd.adapters.framing ~~~ Upstream stream framing: lines into events.

Pure generators over lines (bytes without the newline), tested without HTTP.
Each returns normally only when the stream said it was finished (SSE
``data: [DONE]`` or a format's own end event, an NDJSON object with
``"done": true``); a stream that just
stops raises :class:`StreamCut`, so a cut stream never looks like a finished one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from chatd import codec


class StreamCut(Exception):
    """The upstream stream ended without saying it was finished."""


class BadEvent(Exception):
    """An upstream stream event is not a JSON object."""


def _decode(payload: bytes) -> dict:
    try:
        event = codec.loads(payload)
    except codec.DecodeError:
        raise BadEvent(payload[:200].decode("utf-8", "replace")) from None
    if not isinstance(event, dict):
        raise BadEvent(payload[:200].decode("utf-8", "replace"))
    return event


def iter_sse_events(
    lines: Iterable[bytes], done: Callable[[dict], bool] | None = None
) -> Iterator[dict]:
    """Yield the JSON of each ``data:`` line until the stream's end marker.

    With ``done`` None the end is OpenAI's ``data: [DONE]``; otherwise the end
    is the first event for which ``done(event)`` is true (Anthropic's
    ``message_stop``, Responses' ``response.completed``): that event is
    yielded, then iteration stops. A ``[DONE]`` line is then skipped: it does
    not stand in for the format's own end, so a stream without it is still cut.
    Comment lines (``: OPENROUTER PROCESSING``), ``event:``/``id:`` lines and
    blank separators are skipped; anything after the end (Zen's cost chunk)
    is never read.
    """
    for line in lines:
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            if done is None:
                return
            continue
        if payload:
            event = _decode(payload)
            yield event
            if done is not None and done(event):
                return
    if done is None:
        raise StreamCut("the stream ended without data: [DONE]")
    raise StreamCut("the stream ended without its end event")


def iter_ndjson(lines: Iterable[bytes]) -> Iterator[dict]:
    """Yield one JSON object per non-blank line; stop after ``"done": true``."""
    for line in lines:
        if not line.strip():
            continue
        event = _decode(line)
        yield event
        if event.get("done") is True:
            return
    raise StreamCut('the stream ended without a "done": true line')
