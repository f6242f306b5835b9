"""chatd.app ~~~ The application factory.

:func:`create_app` loads settings, builds the provider registry once, and
wires the error table and the blueprints. Per-app state lives in
``app.extensions["chatd"]``, never in module globals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from flask import Flask, Request, request

from chatd import chat, health, openai_api
from chatd.codec import OrjsonProvider
from chatd.config import Settings, load_settings
from chatd.dispatch import Dispatcher
from chatd.errors import register_error_handlers
from chatd.registry import Registry, build_registry

access_log = logging.getLogger("chatd.access")


class ChatdRequest(Request):
    """Flask's request, stamped when it was made and with room for what was routed.

    A before_request hook would do the stamping at a cost on every call.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started = time.monotonic()
        self.provider = "-"
        self.model = "-"


class ChatdFlask(Flask):
    """Flask with orjson for every JSON answer and chatd's own request class."""

    json_provider_class = OrjsonProvider
    request_class = ChatdRequest


@dataclass(frozen=True)
class Chatd:
    """What the views need, reached through ``current_app.extensions["chatd"]``."""

    settings: Settings
    registry: Registry
    dispatcher: Dispatcher


def set_up_logging(level: str) -> None:
    """Log to stderr (gunicorn's error log) unless something already configured logging."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("chatd").setLevel(level.upper())


def create_app(settings: Settings | None = None, *, environ: Mapping[str, str] | None = None):
    """Create and configure an instance of chatd.

    :param settings: the settings to use; loaded from ``$CHATD_CONFIG`` when None.
    :param environ: where provider keys are looked up; ``os.environ`` when None.
    """
    if settings is None:
        settings = load_settings(environ=environ)
    set_up_logging(settings.log_level)

    # No static files: chatd serves JSON and event streams only.
    app = ChatdFlask(__name__, static_folder=None)
    # Werkzeug refuses larger bodies with 413 before reading them, chunked ones included.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    registry = build_registry(settings, environ)
    app.extensions["chatd"] = Chatd(settings, registry, Dispatcher(registry, settings))

    register_error_handlers(app)
    app.register_blueprint(chat.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openai_api.bp)
    app.after_request(_log_access)
    return app


def _log_access(response):
    # Only what is safe to log: never a header, a body or a key.
    if access_log.isEnabledFor(logging.INFO):
        current = request._get_current_object()
        access_log.info(
            "%s %s %s provider=%s model=%s latency_ms=%d",
            current.method,
            current.path,
            response.status_code,
            current.provider,
            current.model,
            (time.monotonic() - current.started) * 1000,
        )
    return response
