"""chatd.ollama_api ~~~ Ollama's API on chatd's port: ``/api/*``.

An unchanged Ollama client (the ``ollama`` packages, Open WebUI, LangChain's
``ChatOllama``) points its host at chatd and reaches every provider by chatd's
model names: ``/api/chat`` and ``/api/generate`` are read and answered by
:mod:`chatd.dialects.ollama` and dispatched like any chat call;
``/api/tags`` lists the local Ollama's models and every cloud provider's,
prefixed as chatd routes them; ``/api/version`` is chatd's own. Everything else
under ``/api/`` (show, ps, pull, embed, delete, ...) is relayed to the local
Ollama (the registry's ``ollama`` provider) unchanged, streams included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import requests
import urllib3
from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import MethodNotAllowed

from chatd import __version__, codec
from chatd.chat import fallback_headers, read_body
from chatd.dialects import ollama as dialect
from chatd.errors import ChatdError, UpstreamError, UpstreamTimeout, trim
from chatd.neutral import ChatRequest, Event, Reply, ToolCall, ToolCallDelta, Usage
from chatd.registry import MODELS_TIMEOUT
from chatd.validation import parse_json

log = logging.getLogger("chatd.ollama_api")

bp = Blueprint("ollama", __name__, url_prefix="/api")

NDJSON_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Relayed both ways: what says how a body is encoded, never connection headers.
RELAYED_HEADERS = ("Content-Type", "Content-Encoding")
RELAY_CHUNK = 64 * 1024
# The paths chatd answers itself, and their methods.
SERVED_HERE = {
    "chat": ["POST"],
    "generate": ["POST"],
    "tags": ["GET", "HEAD"],
    "version": ["GET", "HEAD"],
}
# `details` as Ollama lists a model; a cloud model has none of these facts.
NO_DETAILS = {
    "parent_model": "",
    "format": "",
    "family": "",
    "families": [],
    "parameter_size": "",
    "quantization_level": "",
}


# -- /api/chat and /api/generate ------------------------------------------------


# NOTE: a bridge to the adapters' pre-split API (chatd shape + raw events);
# replaced by adapter.reply/open_stream when the wire/dialect split lands.
def _neutral_calls(calls, wire: str, seen: int) -> list[ToolCallDelta]:
    out = []
    for n, call in enumerate(calls or ()):
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if arguments is None:
            arguments = ""  # a streamed call's first piece names it, its arguments follow
        elif not isinstance(arguments, str):
            arguments = codec.dumps(arguments).decode()
        # Ollama sends each call whole, so each one is a call of its own.
        index = seen + n if wire == "ollama" else call.get("index", n)
        out.append(ToolCallDelta(index, call.get("id"), function.get("name"), arguments))
    return out


def _usage(counts: dict | None) -> Usage | None:
    if not counts:
        return None
    return Usage(counts.get("prompt_tokens") or 0, counts.get("completion_tokens") or 0)


def _reply(adapter, chat_request: ChatRequest, upstream_model: str) -> Reply:
    data = adapter.complete(dialect.for_wire(chat_request, adapter.wire), upstream_model)
    parts = adapter.translate(adapter.parse_response, data)
    message = parts["message"]
    deltas = _neutral_calls(message.get("tool_calls"), adapter.wire, 0)
    return Reply(
        content=message.get("content") or "",
        thinking=message.get("thinking") or "",
        tool_calls=[ToolCall(d.id or f"call_{d.index}", d.name or "", d.arguments) for d in deltas],
        finish_reason=parts.get("done_reason"),
        usage=_usage(parts.get("usage")) or Usage(),
        raw=data if adapter.wire == "ollama" else None,
    )


def _events(upstream, adapter) -> Iterator[Event]:
    seen = 0
    for raw in upstream:
        parts = adapter.translate(adapter.parse_event, raw)
        calls = _neutral_calls(parts.get("tool_calls"), adapter.wire, seen)
        seen += len(calls)
        yield Event(
            content=parts.get("content") or "",
            thinking=parts.get("thinking") or "",
            tool_calls=calls or None,
            finish_reason=parts.get("done_reason"),
            usage=_usage(parts.get("usage")),
            raw=raw if adapter.wire == "ollama" else None,
        )


def _open_stream(chat_request: ChatRequest):
    def attempt(adapter, route):
        return adapter.open_stream(
            dialect.for_wire(chat_request, adapter.wire), route.upstream_model
        )

    return attempt


def _lines_or_error(lines: Iterator[bytes], upstream, record) -> Iterator[bytes]:
    """``lines``; once the upstream fails, Ollama's last line ``{"error": ...}``."""
    try:
        yield from lines
        record.stream_end = "done"
    except ChatdError as e:
        record.begin()  # the generator may run after the view returned
        record.stream_end = f"error:{e.error_type}"
        log.warning("stream from %s cut: %s", record.provider, e.message)
        yield dialect.ndjson(dialect.render_error(e))
    finally:
        upstream.close()


def _counted(events: Iterator[Event], record) -> Iterator[Event]:
    usage = None
    for event in events:
        usage = event.usage or usage
        yield event
    if usage is not None:
        record.count_tokens(usage.as_dict())


def _answer(chat_request: ChatRequest, generate: bool):
    started = time.monotonic()
    if dialect.is_load(chat_request):
        # No turns: Ollama (un)loads the model. There is nothing to load on a
        # chat API, so chatd answers itself and calls no provider.
        unload = chat_request.native.get("keep_alive") in (0, "0", "0s", "0m")
        return dialect.render_load(chat_request.model, generate=generate, unload=unload)
    dispatcher = current_app.extensions["chatd"].dispatcher
    record = request.record
    if chat_request.stream:
        outcome = dispatcher.run(chat_request, _open_stream(chat_request), record)
        upstream = outcome.result
        events = _counted(_events(upstream, outcome.adapter), record)
        lines = dialect.render_stream(
            events, chat_request.model, generate=generate, started=started
        )
        response = Response(
            _lines_or_error(lines, upstream, record),
            mimetype=dialect.NDJSON,
            headers={**NDJSON_HEADERS, **fallback_headers(outcome)},
        )
        response.call_on_close(upstream.close)
        return response
    outcome = dispatcher.run(
        chat_request,
        lambda adapter, route: _reply(adapter, chat_request, route.upstream_model),
        record,
    )
    record.count_tokens(outcome.result.usage.as_dict())
    body = dialect.render_reply(
        outcome.result, chat_request.model, generate=generate, started=started
    )
    return body, 200, fallback_headers(outcome)


@bp.post("/chat")
def chat():
    """Answer an Ollama chat request from whichever provider the model names."""
    return _answer(dialect.parse_chat(parse_json(read_body())), generate=False)


@bp.post("/generate")
def generate():
    """Answer an Ollama generate request (prompt and system) as a chat call."""
    return _answer(dialect.parse_generate(parse_json(read_body())), generate=True)


# -- /api/tags and /api/version ---------------------------------------------------


@bp.route("/version", methods=["GET", "HEAD"])
def version():
    """chatd's own version: the API served here is chatd's, whatever the local Ollama runs."""
    return {"version": __version__}


@bp.route("/tags", methods=["GET", "HEAD"])
def tags():
    """The local Ollama's models as it lists them, then every cloud provider's, prefixed."""
    registry = current_app.extensions["chatd"].registry
    models = list(_local_models(registry))
    for listed in registry.list_models():
        if listed["owned_by"] == "ollama":
            continue  # listed above in Ollama's own words
        models.append(
            {
                "name": listed["id"],
                "model": listed["id"],
                "modified_at": "1970-01-01T00:00:00Z",
                "size": 0,
                "digest": "",
                "details": NO_DETAILS,
            }
        )
    return {"models": models}


def _local_models(registry) -> list[dict]:
    adapter = registry.adapters.get("ollama")
    if adapter is None or "ollama" in registry.disabled:
        return []
    try:
        response = adapter.session.get(adapter.base_url + "/api/tags", timeout=MODELS_TIMEOUT)
        response.raise_for_status()
        models = response.json()["models"]
    except (requests.RequestException, ValueError, KeyError, TypeError) as e:
        log.warning("local Ollama's models skipped (%s)", type(e).__name__)
        return []
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


# -- everything else: the local Ollama, relayed --------------------------------------


@bp.route("/<path:rest>", methods=["GET", "HEAD", "POST", "DELETE"])
def relay(rest: str):
    """Pass the call to the local Ollama unchanged; relay its answer as it comes."""
    if rest in SERVED_HERE:
        # A wrong method on a path chatd serves itself, not a question for Ollama.
        raise MethodNotAllowed(valid_methods=SERVED_HERE[rest])
    adapter = current_app.extensions["chatd"].registry.get("ollama")
    record = request.record
    record.provider = "ollama"
    body = read_body() if request.method not in ("GET", "HEAD") else None
    headers = {h: request.headers[h] for h in RELAYED_HEADERS if h in request.headers}
    policy = adapter.policy
    try:
        upstream = adapter.session.request(
            request.method,
            f"{adapter.base_url}/api/{rest}",
            params=request.args,
            data=body,
            headers=headers,
            stream=True,
            allow_redirects=False,
            # Each read waits at most this long: a pull may run for minutes, but
            # never a gap longer than the idle timeout.
            timeout=(policy.connect_timeout, max(policy.timeout, policy.idle_timeout)),
        )
    except requests.Timeout:
        raise UpstreamTimeout(
            "the local Ollama did not answer in time", provider="ollama"
        ) from None
    except requests.RequestException as e:
        raise UpstreamError(
            f"the local Ollama is unreachable ({type(e).__name__})", provider="ollama"
        ) from None
    out = {h: upstream.headers[h] for h in RELAYED_HEADERS if h in upstream.headers}
    response = Response(
        _relayed(upstream, record), status=upstream.status_code, headers={**out, **NDJSON_HEADERS}
    )
    response.call_on_close(upstream.close)
    return response


def _relayed(upstream: requests.Response, record) -> Iterator[bytes]:
    """The local Ollama's body as it arrives; a failure ends it (the status is already out)."""
    try:
        # decode_content=False: the bytes go out under the upstream's own Content-Encoding.
        while chunk := upstream.raw.read1(RELAY_CHUNK, decode_content=False):
            yield chunk
        record.stream_end = "done"
    except (OSError, urllib3.exceptions.HTTPError) as e:
        record.begin()
        record.stream_end = "error:upstream_error"
        log.warning("relay from the local Ollama cut: %s", trim(str(e), 200))
    finally:
        upstream.close()
