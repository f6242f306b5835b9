"""chatd.errors ~~~ The domain exceptions and the one table that maps them to HTTP.

Each exception carries its own status and error type, so the table is the class
tree itself; :func:`register_error_handlers` turns any of them, werkzeug's HTTP
errors and anything unexpected into the same JSON body:
``{"error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations

import logging

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

    ``retryable``: the same call may succeed soon (a retry, then a cooldown
    count); ``retry_after``: seconds the upstream asked us to wait.
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
        **details,
    ):
        super().__init__(message, headers=headers, **details)
        self.retryable = retryable
        self.retry_after = retry_after

    @property
    def is_provider_fault(self) -> bool:
        """Whether this failure says the provider is unwell (cooldown counts it)."""
        return self.retryable or isinstance(self, UpstreamTimeout)

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


def trim(text: str, limit: int = MAX_UPSTREAM_TEXT) -> str:
    """Return ``text`` cut to ``limit`` characters, marked when it was cut."""
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _speaks_ollama() -> bool:
    """Whether the caller is an Ollama client: they read only ``{"error": "<text>"}``."""
    return request.path.startswith("/api/")


def error_response(error: ChatdError):
    if _speaks_ollama():
        body = {"error": error.message}
    else:
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
    body = (
        {"error": message}
        if _speaks_ollama()
        else {
            "error": {
                "type": error_type,
                "message": message,
                "code": error_type,
                "request_id": current_request_id(),
            }
        }
    )
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


def register_error_handlers(app: Flask) -> None:
    """Register the error table on the app (a blueprint cannot catch routing 404s)."""
    app.register_error_handler(ChatdError, _handle_chatd_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
