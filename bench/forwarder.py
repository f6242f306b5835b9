"""The reference rows of chatd's benchmark: the stack chatd is built on, doing nothing else.

    BENCH_UPSTREAM=http://127.0.0.1:PORT gunicorn -k gthread ... forwarder:app

- ``POST /api/chat``: the field's "bare Flask + gunicorn gthread + requests
  forwarder": the body goes to the upstream as it came and the answer comes
  back as it went, through a plain ``requests.Session`` (no validation, no
  routing, no mapping, no logging, no metrics).
- ``/hello``: a canned answer from a bare WSGI callable: gunicorn's own cost.

chatd's CPU per request minus the forwarder's is what chatd's own work costs;
the forwarder's minus /hello's is what Flask and requests cost.
"""

import os

import requests
from flask import Flask, Response, request

UPSTREAM = os.environ["BENCH_UPSTREAM"]
HELLO = b'{"status":"ok"}'

session = requests.Session()
# As many pooled connections as gunicorn has threads, as chatd has.
session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=256))
flask_app = Flask(__name__)


@flask_app.post("/api/chat")
def chat():
    upstream = session.post(
        UPSTREAM + "/api/chat",
        data=request.get_data(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    return Response(upstream.content, upstream.status_code, content_type="application/json")


def app(environ, start_response):
    if environ["PATH_INFO"] == "/hello":
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(HELLO)))]
        start_response("200 OK", headers)
        return [HELLO]
    return flask_app(environ, start_response)
