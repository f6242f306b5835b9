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
from werkzeug.exceptions import MethodNotAllowed, NotFound

from chatd import __version__
from chatd.answer import Rendering, answer, read_body
from chatd.dialects import ollama as dialect
from chatd.errors import UpstreamError, UpstreamTimeout, trim
from chatd.neutral import ChatRequest
from chatd.registry import MODELS_TIMEOUT
from chatd.validation import parse_json

log = logging.getLogger("chatd.ollama_api")

# Errors under this path are answered in Ollama's envelope (chatd.errors).
PREFIX = "/api"
bp = Blueprint("ollama", __name__, url_prefix=PREFIX)

# The relay's answers (a pull streams for minutes): not cached, not buffered by a proxy.
RELAY_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
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


def _answer(chat_request: ChatRequest, generate: bool):
    started = time.monotonic()
    if dialect.is_load(chat_request):
        # No turns: Ollama (un)loads the model. There is nothing to load on a
        # chat API, so chatd answers itself and calls no provider.
        unload = chat_request.native.get("keep_alive") in (0, "0", "0s", "0m")
        return dialect.render_load(chat_request.model, generate=generate, unload=unload)
    rendering = Rendering(
        reply=lambda reply, outcome: dialect.render_reply(
            reply, chat_request.model, generate=generate, started=started
        ),
        stream=lambda events, outcome: dialect.render_stream(
            events, chat_request.model, generate=generate, started=started
        ),
        stream_error=dialect.render_stream_error,
        mimetype=dialect.NDJSON,
    )
    return answer(chat_request, rendering)


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
        models = adapter.get_json(adapter.base_url + "/api/tags", MODELS_TIMEOUT)["models"]
    except (UpstreamError, KeyError, TypeError) as e:
        log.warning("local Ollama's models skipped (%s)", type(e).__name__)
        return []
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


# -- everything else: the local Ollama, relayed --------------------------------------


@bp.route("/<path:rest>", methods=["GET", "HEAD", "POST", "DELETE"])
def relay(rest: str):
    """Pass the call to the local Ollama unchanged; relay its answer as it comes."""
    if any(segment in ("", ".", "..") for segment in rest.split("/")):
        # Dot segments would leave /api/ on the upstream's host (urllib3 resolves
        # them), and /api/chat/ is no way around chatd's own /api/chat.
        raise NotFound()
    if rest in SERVED_HERE:
        # A wrong method on a path chatd serves itself, not a question for Ollama.
        raise MethodNotAllowed(valid_methods=SERVED_HERE[rest])
    adapter = current_app.extensions["chatd"].registry.get("ollama")
    record = request.record
    record.provider = "ollama"
    body = read_body() if request.method not in ("GET", "HEAD") else None
    headers = {h: request.headers[h] for h in RELAYED_HEADERS if h in request.headers}
    # The body goes out under the upstream's Content-Encoding: only one the client takes.
    headers["Accept-Encoding"] = request.headers.get("Accept-Encoding", "identity")
    policy = adapter.policy
    try:
        upstream = adapter.session.request(
            request.method,
            f"{adapter.base_url}/api/{rest}",
            params=list(request.args.items(multi=True)),
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
    # chatd itself never answers 500: the local Ollama's own is a 502 here.
    status = 502 if upstream.status_code == 500 else upstream.status_code
    response = Response(_relayed(upstream, record), status=status, headers={**out, **RELAY_HEADERS})
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
