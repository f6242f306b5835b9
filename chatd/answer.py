"""chatd.answer ~~~ One chat call, answered in a client's dialect.

Every chat surface (``/chat``, ``/v1/chat/completions``, ``/v1/messages``,
``/api/chat`` and ``/api/generate``) does the same after reading its request:
run it through the dispatcher (a whole answer, or a stream whose first event
is already in), note its tokens, render it in the client's dialect, and say
which model names were tried. :func:`answer` is that, once; a surface gives
it a :class:`Rendering` of its dialect's functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from chatd.dispatch import Outcome
from chatd.neutral import ChatRequest, Event, Reply
from chatd.streaming import SSE, counted, stream_response


@dataclass(frozen=True)
class Rendering:
    """How one dialect answers: a whole reply, a stream, an in-band stream error."""

    reply: Callable[[Reply, Outcome], dict]
    stream: Callable[[Iterator[Event], Outcome], Iterator[bytes]]
    stream_error: Callable[[dict], bytes]
    mimetype: str = SSE


def read_body() -> bytes:
    """Return the request body; 413 once it passes max_request_bytes, chunked or not.

    A declared length is checked before anything is read. A chunked body
    werkzeug reads only up to the limit, stopping without saying whether more
    was coming: one more byte from the server's stream tells.
    """
    current = request._get_current_object()
    limit = current.max_content_length
    length = current.content_length
    if length is not None:
        if length > limit:
            raise RequestEntityTooLarge()
        return current.environ["wsgi.input"].read(length)
    data = current.get_data(cache=False)
    if len(data) >= limit and current.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return data


def fallback_headers(outcome: Outcome) -> dict:
    """Say what was tried when more than one model name was (an alias or fallbacks)."""
    if len(outcome.tried) > 1:
        return {"X-Chatd-Fallbacks": ", ".join(outcome.tried)}
    return {}


def open_stream(chat_request: ChatRequest):
    """An attempt that opens the stream (its first event read, so failures still retry)."""
    return lambda adapter, route, deadline: adapter.open_stream(
        chat_request, route.upstream_model, deadline
    )


def get_reply(chat_request: ChatRequest):
    """An attempt that makes one whole call and reads it into a neutral Reply."""
    return lambda adapter, route, deadline: adapter.reply(
        chat_request, route.upstream_model, deadline
    )


def answer(chat_request: ChatRequest, render: Rendering):
    """Serve ``chat_request`` and answer it as ``render`` says, streamed or whole."""
    dispatcher = current_app.extensions["chatd"].dispatcher
    record = request.record
    if chat_request.stream:
        outcome = dispatcher.run(chat_request, open_stream(chat_request), record)
        upstream = outcome.result
        rendered = render.stream(counted(upstream, record), outcome)
        response = stream_response(
            rendered, upstream, record, render.stream_error, mimetype=render.mimetype
        )
        response.headers.update(fallback_headers(outcome))
        return response
    outcome = dispatcher.run(chat_request, get_reply(chat_request), record)
    record.count_tokens(outcome.result.usage.as_dict())
    return render.reply(outcome.result, outcome), 200, fallback_headers(outcome)
