"""chatd.adapters.base ~~~ What every wire format shares: sending, timing, errors.

:meth:`ChatAdapter._post` is the one boundary where ``requests`` and urllib3
exceptions become chatd's own (:mod:`chatd.errors`); nothing above an adapter
sees a transport exception. Subclasses only say how their format's bodies look.
"""

from __future__ import annotations

import json
import time

import requests
import urllib3

from chatd.errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    trim,
)
from chatd.validation import ChatRequest

# Error bodies are read no further than this: only the first KiB is passed on.
MAX_ERROR_BODY = 64 * 1024
READ_SIZE = 64 * 1024


def error_text(body) -> str | None:
    """Return the message in a decoded upstream error envelope, or None if it has none.

    One rule covers Ollama ``{"error": "..."}``, OpenAI/Kimi/OpenRouter
    ``{"error": {"message": ...}}`` and Zen ``{"type": "error", "error": {...}}``.
    """
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return trim(error)
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return trim(error["message"])
    return None


def upstream_message(raw: bytes) -> str:
    """Return the human message in an upstream error body; anything else as trimmed text."""
    text = raw.decode("utf-8", "replace")
    try:
        return error_text(json.loads(text)) or trim(text)
    except ValueError:
        return trim(text)


def _socket_of(response: requests.Response):
    """Return the socket under ``response`` so its timeout can shrink as the deadline nears."""
    connection = getattr(response.raw, "_connection", None)
    return getattr(connection, "sock", None)


class ChatAdapter:
    """One wire format, spoken to one provider over its own pooled session."""

    wire = ""
    chat_path = ""

    def __init__(
        self,
        provider: str,
        base_url: str,
        session: requests.Session,
        *,
        timeout: float,
        connect_timeout: float,
        max_response_bytes: int,
        probe_path: str | None = None,
        probe_timeout: float = 1.0,
    ):
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.chat_url = self.base_url + self.chat_path
        self.probe_url = self.base_url + probe_path if probe_path else None
        self.session = session
        self.timeout = timeout
        # requests times each phase on its own: connect, then every read.
        self._timeouts = (min(connect_timeout, timeout), timeout)
        self.max_response_bytes = max_response_bytes
        self.probe_timeout = probe_timeout

    def __repr__(self) -> str:
        # Never the session: its headers hold the key.
        return f"<{type(self).__name__} {self.provider} {self.chat_url}>"

    # -- what a wire format defines ------------------------------------------

    def build_body(self, request: ChatRequest, upstream_model: str) -> dict:
        raise NotImplementedError

    def parse_response(self, data: dict) -> dict:
        """Return ``{"message", "done_reason", "usage"}`` from the upstream's answer."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------

    def chat(self, request: ChatRequest, upstream_model: str) -> dict:
        """Send one non-streaming chat call; return the normalized answer."""
        data = self._post(self.build_body(request, upstream_model))
        message = error_text(data)
        if message is not None:
            # Some upstreams report failure inside a 200 (Ollama, OpenRouter).
            raise UpstreamError(
                f"{self.provider} answered with an error: {message}", provider=self.provider
            )
        try:
            return self.parse_response(data)
        except (KeyError, IndexError, TypeError, AttributeError):
            raise UpstreamError(
                f"{self.provider} answered with JSON of an unexpected shape",
                provider=self.provider,
            ) from None

    def probe(self) -> bool:
        """Return whether the provider's probe URL answers 2xx within the probe timeout."""
        if self.probe_url is None:
            return True
        try:
            response = self.session.get(self.probe_url, timeout=self.probe_timeout)
            response.close()
        except requests.RequestException:
            return False
        return response.ok

    def _post(self, body: dict) -> dict:
        """POST ``body`` as JSON within the total deadline; return the decoded answer."""
        deadline = time.monotonic() + self.timeout
        payload = json.dumps(body).encode()
        try:
            response = self.session.post(
                self.chat_url, data=payload, timeout=self._timeouts, stream=True
            )
        except requests.Timeout:
            raise self._timeout_error() from None
        except requests.RequestException as e:
            raise self._unreachable_error(e) from None

        with response:
            status = response.status_code
            limit = MAX_ERROR_BODY if status >= 400 else self.max_response_bytes
            raw = self._read_body(response, deadline, limit, truncate=status >= 400)
        if status >= 400:
            raise self._status_error(status, raw, response.headers)
        try:
            data = json.loads(raw)
        except ValueError:
            text = trim(raw.decode("utf-8", "replace"), 200)
            raise UpstreamError(
                f"{self.provider} answered {status} with invalid JSON: {text}",
                provider=self.provider,
                upstream_status=status,
            ) from None
        if not isinstance(data, dict):
            raise UpstreamError(
                f"{self.provider} answered with JSON that is not an object",
                provider=self.provider,
                upstream_status=status,
            )
        return data

    def _read_body(
        self, response: requests.Response, deadline: float, limit: int, truncate: bool
    ) -> bytes:
        """Read the whole body, but never past ``deadline`` nor past ``limit`` bytes.

        requests' read timeout applies to each read, so a server that drips a
        byte a second would never trip it; here every read waits at most for
        what is left of the total deadline, and ``read1`` returns whatever has
        arrived instead of waiting for a full buffer.
        """
        sock = _socket_of(response)
        chunks = []
        size = 0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout_error()
                if sock is not None:
                    sock.settimeout(remaining)
                chunk = response.raw.read1(READ_SIZE, decode_content=True)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    if truncate:
                        break
                    raise UpstreamError(
                        f"{self.provider} answer is larger than max_response_bytes ({limit} bytes)",
                        provider=self.provider,
                    )
        except urllib3.exceptions.ReadTimeoutError:
            raise self._timeout_error() from None
        except (OSError, urllib3.exceptions.HTTPError) as e:
            raise UpstreamError(
                f"{self.provider} broke off its answer ({type(e).__name__})",
                provider=self.provider,
                upstream_status=response.status_code,
            ) from None
        return b"".join(chunks)

    def _timeout_error(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"{self.provider} did not answer within timeout_secs ({self.timeout:g} s)",
            provider=self.provider,
        )

    def _unreachable_error(self, error: Exception) -> UpstreamError:
        # The class name says what happened without echoing internals (or a URL with a key).
        return UpstreamError(
            f"{self.provider} is unreachable ({type(error).__name__})",
            provider=self.provider,
        )

    def _status_error(self, status: int, raw: bytes, headers) -> UpstreamError:
        message = f"{self.provider} answered {status}: {upstream_message(raw)}"
        if status == 429:
            retry_after = headers.get("Retry-After")
            return UpstreamRateLimited(
                message,
                headers={"Retry-After": retry_after} if retry_after else None,
                provider=self.provider,
                upstream_status=status,
            )
        return UpstreamError(message, provider=self.provider, upstream_status=status)
