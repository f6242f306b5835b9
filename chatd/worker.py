"""chatd.worker ~~~ gunicorn's gthread worker, answering its own errors in JSON.

gunicorn answers a request it cannot parse (a bad request line or header,
a URI or header block over its limits) itself, before chatd sees it, and
writes that answer as an HTML page. :class:`ChatdWorker` is gthread with one
change: those answers carry chatd's JSON error body, so every non-2xx a
client gets from chatd's own server parses the same way.
"""

from __future__ import annotations

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from chatd import codec

# gunicorn's statuses and the error types chatd gives them.
ERROR_TYPES = {
    400: "invalid_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal",
    501: "not_implemented",
}
# gunicorn's message names what it could not parse; no more of it than this.
MAX_MESSAGE = 200


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """Write gunicorn's error answer as chatd's JSON body (util.write_error's signature)."""
    error_type = ERROR_TYPES.get(status_int, "http_error")
    message = (mesg or reason)[:MAX_MESSAGE]
    if status_int >= 500:
        # gunicorn's 500 here is a server fault; its text may name internals.
        message = reason
    body = codec.dumps({"error": {"type": error_type, "message": message, "code": error_type}})
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


class ChatdWorker(ThreadWorker):
    """gthread, with gunicorn's own error answers in chatd's JSON shape."""

    def init_process(self):
        # This process is a chatd worker: its server errors are JSON. Replaced
        # here, not at import, because the master imports this module too.
        util.write_error = write_json_error
        super().init_process()
