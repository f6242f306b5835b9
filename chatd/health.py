"""chatd.health ~~~ ``GET /health``: readiness, always 200 while the process serves.

It touches no upstream; provider availability is ``/chat/providers``' job.
"""

from flask import Blueprint

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    return {"status": "ok"}
