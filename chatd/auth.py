"""chatd.auth ~~~ Inbound bearer tokens.

With ``[auth]`` tokens set, every route but ``/health`` and ``/`` (and ``/metrics``
unless ``protect_metrics = false``) needs ``Authorization: Bearer <token>``,
or ``x-api-key: <token>`` as Anthropic's SDKs and Claude Code send it.
Several tokens may be valid at once, so a token can be rotated without
downtime. Comparison is constant-time against every token, and no token, good
or bad, is ever logged or echoed.
"""

from __future__ import annotations

import hmac

from flask import request

from chatd.errors import ChatdError

# "/" too: Claude Code's warm-up HEAD / carries no key, and "/" tells nothing.
OPEN_PATHS = frozenset({"/health", "/"})


class Unauthorized(ChatdError):
    """No valid bearer token."""

    status_code = 401
    error_type = "unauthorized"

    def __init__(self, message: str):
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="chatd"'})


class TokenCheck:
    """A before_request hook that lets through only holders of a token."""

    def __init__(self, tokens: tuple[str, ...], protect_metrics: bool = True):
        self._tokens = tuple(token.encode() for token in tokens)
        self._open = OPEN_PATHS if protect_metrics else OPEN_PATHS | {"/metrics"}

    def __call__(self) -> None:
        if request.path in self._open:
            return
        header = request.headers.get("Authorization")
        if header is None and "x-api-key" in request.headers:
            token = request.headers["x-api-key"]
        else:
            scheme, _, token = (header or "").partition(" ")
            if scheme.lower() != "bearer":
                token = ""
        if not token.strip():
            raise Unauthorized(
                "this chatd needs Authorization: Bearer <token> or x-api-key: <token>"
            )
        given = token.strip().encode()
        # Compare with every token, without stopping early, so timing tells nothing.
        matched = False
        for known in self._tokens:
            matched |= hmac.compare_digest(given, known)
        if not matched:
            raise Unauthorized("the token (Bearer or x-api-key) is not valid for this chatd")
