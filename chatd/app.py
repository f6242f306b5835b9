"""chatd.app ~~~ The application factory.

:func:`create_app` loads settings, builds the provider registry and the
dispatcher once, and wires the error table, inbound auth, the per-request
record (request id, access line, Server-Timing, metrics) and the blueprints.
Per-app state lives in ``app.extensions["chatd"]``, never in module globals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from flask import Flask, Request, request
from werkzeug.middleware.proxy_fix import ProxyFix

from chatd import anthropic_api, chat, health, memory, ollama_api, openai_api
from chatd.auth import TokenCheck
from chatd.codec import OrjsonProvider
from chatd.config import Settings, check_exposure, effective_tokens, load_settings
from chatd.dialects import anthropic, ollama
from chatd.dispatch import Dispatcher
from chatd.errors import register_error_handlers
from chatd.metrics import Metrics
from chatd.observability import CallRecord, finish, request_id_from, set_up_logging
from chatd.registry import Registry, build_registry


class ChatdRequest(Request):
    """Flask's request, with the record of what serving it did.

    Made here rather than in a before_request hook, which would cost a call
    on every request.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = CallRecord(
            request_id_from(self.headers.get("X-Request-ID")),
            self.method,
            self.path,
            self.remote_addr or "-",
        )
        self.record.begin()


class ChatdFlask(Flask):
    """Flask with orjson for every JSON answer and chatd's own request class."""

    json_provider_class = OrjsonProvider
    request_class = ChatdRequest


@dataclass(frozen=True)
class Chatd:
    """What the views need, reached through ``current_app.extensions["chatd"]``."""

    settings: Settings
    #: Whether a bearer token guards the routes (some token was effective at start-up).
    authenticated: bool
    registry: Registry
    dispatcher: Dispatcher
    metrics: Metrics


def create_app(
    settings: Settings | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    tokens: tuple[str, ...] | None = None,
):
    """Create and configure an instance of chatd.

    :param settings: the settings to use; loaded from ``$CHATD_CONFIG`` when None.
    :param environ: where provider keys and tokens are looked up; ``os.environ`` when None.
    :param tokens: inbound tokens already read (by gunicorn's master); read here when None.
    """
    environ = os.environ if environ is None else environ
    if settings is None:
        settings = load_settings(environ=environ)
    set_up_logging(settings.log_level, settings.log_format)

    # No static files: chatd serves JSON and event streams only.
    app = ChatdFlask(__name__, static_folder=None)
    # Werkzeug refuses larger bodies with 413 before reading them (chatd.answer.read_body).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    # Auth is decided once, before anything else is built, and fails closed
    # (the master already decided when it hands its tokens over).
    if tokens is None:
        tokens = effective_tokens(settings.auth, environ)
    check_exposure([settings.bind], settings.auth, tokens, settings.source)
    metrics = Metrics()
    registry = build_registry(settings, environ)
    dispatcher = Dispatcher(registry, settings, metrics)
    app.extensions["chatd"] = Chatd(settings, bool(tokens), registry, dispatcher, metrics)

    if settings.trusted_proxies:
        # The client address and scheme as nginx (or another proxy) saw them.
        app.wsgi_app = ProxyFix(
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies
        )
    if tokens:
        app.before_request(TokenCheck(tokens, settings.auth.protect_metrics))
    else:
        # Not the address: gunicorn's --bind may differ from [chatd] bind (its hook names it).
        app.logger.warning("no [auth] tokens: every client that can reach chatd may call it")

    # Anthropic's and Ollama's clients read errors in their own envelopes.
    register_error_handlers(
        app, {anthropic_api.PREFIX: anthropic.error_body, ollama_api.PREFIX: ollama.error_body}
    )
    app.register_blueprint(chat.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openai_api.bp)
    app.register_blueprint(anthropic_api.bp)
    app.register_blueprint(ollama_api.bp)
    app.after_request(finish_responses(metrics))
    # A large body's parsed objects are freed by then; the heap need not keep them.
    app.teardown_request(memory.trim_after_large_body)
    return app


def finish_responses(metrics: Metrics):
    """An after_request hook: request id and Server-Timing on every answer, and the
    record finished now, or, for a stream, when the stream closes."""

    def _finish(response):
        current = request._get_current_object()
        record = current.record
        record.status = response.status_code
        rule = current.url_rule
        record.route = rule.rule if rule is not None else "unmatched"
        response.headers["X-Request-ID"] = record.request_id
        response.headers["Server-Timing"] = record.server_timing()
        if response.is_streamed:
            response.call_on_close(lambda: finish(record, metrics))
        else:
            finish(record, metrics)
        return response

    return _finish
