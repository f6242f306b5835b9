"""chatd.health ~~~ ``/health``, ``/metrics`` and ``/openapi.json``: what operators and tools poll.

/health is readiness, always 200 while the process serves; it touches no
upstream (provider availability is ``/chat/providers``' job).
"""

from functools import cache
from importlib.resources import files

from flask import Blueprint, Response, current_app

bp = Blueprint("health", __name__)


@cache
def openapi_document() -> bytes:
    return files("chatd").joinpath("openapi.json").read_bytes()


@bp.get("/metrics")
def metrics():
    """Prometheus metrics, summed over every gunicorn worker."""
    body, content_type = current_app.extensions["chatd"].metrics.render()
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi():
    """Serve the OpenAPI 3.1 document of chatd's API (kept true by tests/test_openapi.py)."""
    return Response(openapi_document(), mimetype="application/json")


@bp.get("/health")
def health():
    return {"status": "ok"}
