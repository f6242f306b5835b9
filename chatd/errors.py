"""chatd.errors ~~~ The domain exceptions and the one table that maps them to HTTP.

Each exception carries its own status and error type, so the table is the class
tree itself; :func:`register_error_handlers` turns any of them, werkzeug's HTTP
errors and anything unexpected into the same JSON body:
``{"error": {"type": ..., "message": ...}}``; a client dialect with an envelope
of its own (Anthropic's, under ``/v1/messages``) gets its errors in that, with
the same statuses.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from chatd.observability import current_request_id

log = logging.getLogger("chatd.errors")

# Upstream error text is passed on to the client, but never more than this.
MAX_UPSTREAM_TEXT = 1024


class ChatdError(Exception):
    """Base of chatd's domain errors; ``status_code`` and ``error_type`` are the table."""

    status_code = 500
    error_type = "internal"

    def __init__(self, message: str, *, headers: dict | None = None, **details):
        super().__init__(message)
        self.message = message
        # A copy: callers pass shared constants (DONT_RETRY), and the dispatcher adds to it.
        self.headers = dict(headers or {})
        # Extra, non-secret fields for the error body (provider, upstream_status, ...).
        self.details = details

    def to_dict(self) -> dict:
        # `code` too, so OpenAI SDKs read the same body (they look for message, type, code).
        return {
            "error": {
                "type": self.error_type,
                "message": self.message,
                "code": self.error_type,
                **self.details,
            }
        }


class BadRequest(ChatdError):
    """The request body is not a valid chat request; the message names the field."""

    status_code = 400
    error_type = "invalid_request"


class TooComplex(ChatdError):
    """The body is within max_request_bytes but would take too much memory parsed."""

    status_code = 413
    error_type = "request_too_large"


class ProviderNotFound(ChatdError):
    """The model routes to a provider that is not registered (it has no key)."""

    status_code = 404
    error_type = "provider_not_found"


class ModelNotFound(ChatdError):
    """No registered provider lists a model of this name."""

    status_code = 404
    error_type = "model_not_found"


class ProviderDisabled(ChatdError):
    """The provider is registered but switched off by ``disabled_providers``."""

    status_code = 503
    error_type = "provider_disabled"

    def __init__(self, message: str, **details):
        # Switched off by config: an SDK's automatic retry of this 503 cannot help.
        super().__init__(message, headers={"x-should-retry": "false"}, **details)


class ProviderCooling(ChatdError):
    """The provider failed too often in a row and is cooling down; retry after a while."""

    status_code = 503
    error_type = "provider_disabled"


class ProviderBusy(ChatdError):
    """The provider has ``max_in_flight`` calls running and none finished in time."""

    status_code = 503
    error_type = "provider_busy"


class Overloaded(ChatdError):
    """Every thread chatd may give to upstream calls is taken."""

    status_code = 503
    error_type = "overloaded"


class UpstreamError(ChatdError):
    """The upstream was unreachable, failed, or answered with something unusable.

    ``retryable``: the same call may succeed soon; ``retry_after``: seconds the
    upstream asked us to wait; ``scope``: what a cooldown counts it against:
    ``"provider"`` (it could not be reached), ``"model"`` (it answered badly: a
    5xx, garbage, an error inside a 200), or None (a 429 or another 4xx).
    """

    status_code = 502
    error_type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        headers: dict | None = None,
        scope: str | None = "model",
        **details,
    ):
        super().__init__(message, headers=headers, **details)
        self.retryable = retryable
        self.retry_after = retry_after
        self.scope = scope

    @property
    def request_rejected(self) -> bool:
        """The upstream refused the request itself: no fallback would take it either."""
        return self.details.get("upstream_status") in (400, 413, 422)


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect, start, or finish its answer in time."""

    status_code = 504
    error_type = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    """The upstream answered 429; its ``Retry-After`` is passed on."""

    status_code = 429
    error_type = "rate_limited"


# werkzeug's own errors (unknown route, wrong method, body too large) get
# error types in the same style as ours.
_HTTP_ERROR_TYPES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


# Whatever follows "Bearer " in upstream text is a credential, ours or not.
_BEARER = re.compile(r"(?i)(bearer)\s+[^\s\"',;]+")
REDACTED = "[redacted]"
# The keys this process holds, as one pattern (longest first, so no key is
# half-replaced by a shorter one it contains). Set once the registry is built.
# A "key" shorter than MIN_SECRET is no real provider key (those are dozens of
# characters) and would mangle ordinary words; the bearer rule still applies.
MIN_SECRET = 8
_secrets: set[str] = set()
_secret_pattern: re.Pattern | None = None
_secrets_lock = threading.Lock()


def add_secrets(*values: str) -> None:
    """Make ``values`` (provider keys) redacted from every upstream text from now on."""
    global _secret_pattern
    with _secrets_lock:
        new = {value for value in values if len(value) >= MIN_SECRET} - _secrets
        if not new:
            return
        _secrets.update(new)
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(value) for value in ordered))


def redact(text: str) -> str:
    """Return upstream ``text`` with every known key and any bearer credential replaced."""
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    return _BEARER.sub(rf"\1 {REDACTED}", text)


def trim(text: str, limit: int = MAX_UPSTREAM_TEXT) -> str:
    """Return ``text`` cut to ``limit`` characters, marked when it was cut."""
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _dialect_envelope(status: int, message: str, details: dict) -> dict | None:
    """The error body in the envelope of the dialect that serves this path, if it has one."""
    path = request.path
    for prefix, render in current_app.extensions.get("error_envelopes", ()):
        if path == prefix or path.startswith(prefix + "/"):
            return render(status, message, current_request_id(), **details)
    return None


def error_response(error: ChatdError):
    body = _dialect_envelope(error.status_code, error.message, error.details)
    if body is None:
        body = error.to_dict()
        body["error"]["request_id"] = current_request_id()
    response = jsonify(body)
    response.status_code = error.status_code
    response.headers.update(error.headers)
    return response


def _handle_chatd_error(error: ChatdError):
    return error_response(error)


def _handle_http_exception(error: HTTPException):
    message = error.description or error.name
    if error.code == 404:
        message = f"no route for {request.method} {request.path}"
    elif error.code == 405:
        message = f"{request.method} is not allowed on {request.path}"
    elif error.code == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = f"request body is larger than max_request_bytes ({limit} bytes)"
    error_type = _HTTP_ERROR_TYPES.get(error.code, "http_error")
    body = _dialect_envelope(error.code or 500, message, {}) or {
        "error": {
            "type": error_type,
            "message": message,
            "code": error_type,
            "request_id": current_request_id(),
        }
    }
    response = jsonify(body)
    response.status_code = error.code or 500
    if error.code == 405 and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _handle_unexpected(error: Exception):
    # Like `except Exception:` -- so let werkzeug's HTTP errors through to their handler.
    if isinstance(error, HTTPException):
        return _handle_http_exception(error)
    log.error("unhandled error", exc_info=error)
    return error_response(ChatdError("internal error"))


def register_error_handlers(app: Flask, envelopes: Mapping[str, Callable] | None = None) -> None:
    """Register the error table on the app (a blueprint cannot catch routing 404s).

    :param envelopes: path prefix -> ``render(status, message, request_id, **details)``
        for the dialects that answer errors in their own envelope.
    """
    app.extensions["error_envelopes"] = tuple((envelopes or {}).items())
    app.register_error_handler(ChatdError, _handle_chatd_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
