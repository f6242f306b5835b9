"""Where a chatd worker's CPU goes under load, by layer, from py-spy samples.

py-spy samples the worker's Python stacks while it holds the GIL (``--gil``),
so every sample is CPU spent in Python or in C called from Python. Each
sample is charged to the layer of its innermost frame that belongs to one of
ours (gunicorn, Flask, requests, chatd, ...): a ``selectors`` or ``threading``
frame under gunicorn's event loop is gunicorn's cost, not the stdlib's. A few
stdlib modules are layers of their own because they are the known costs
(``http.client``'s header parsing, ``logging``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# (substring of a frame's file path, layer): first match wins, innermost frame first.
LAYERS = [
    ("/http/client.py", "http.client (upstream status line and headers)"),
    ("/email/", "http.client (upstream status line and headers)"),
    ("/logging/", "logging (access line)"),
    ("/prometheus_client/", "prometheus_client (metrics)"),
    ("/chatd/", "chatd (validation, routing, mapping, dispatch, observability)"),
    ("/urllib3/", "requests + urllib3 (upstream call)"),
    ("/requests/", "requests + urllib3 (upstream call)"),
    ("/flask/", "Flask + Werkzeug (request, routing, response)"),
    ("/werkzeug/", "Flask + Werkzeug (request, routing, response)"),
    ("/gunicorn/", "gunicorn gthread (accept, parse, event loop, threads)"),
]
OTHER = "other (stdlib under no layer above)"
RATE = 250  # samples per second


def py_spy() -> str | None:
    return shutil.which("py-spy", path=str(Path(sys.executable).parent))


def record(pid: int, seconds: int, out: Path) -> subprocess.Popen:
    """Start py-spy on ``pid`` for ``seconds``; its raw samples go to ``out``."""
    command = [py_spy(), "record", "--gil", "--format", "raw", "--rate", str(RATE)]
    command += ["--duration", str(seconds), "--pid", str(pid), "--output", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def layer_of(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        # "function (path:line)"; py-spy shortens the path to start at the package.
        path = "/" + frame[frame.rfind("(") + 1 : frame.rfind(":")]
        for part, layer in LAYERS:
            if part in path:
                return layer
    return OTHER


def summarize(raws: list[Path], top: int = 12) -> dict:
    """Share of samples per layer, and the functions most often on top of the stack."""
    layers, functions, total = Counter(), Counter(), 0
    for line in (line for raw in raws for line in raw.read_text().splitlines()):
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = stack.split(";"), int(count)
        total += n
        layers[layer_of(frames)] += n
        functions[frames[-1]] += n
    return {
        "samples": total,
        "layers_percent": {k: round(100 * n / total, 1) for k, n in layers.most_common()},
        "top_functions_percent": {
            k: round(100 * n / total, 1) for k, n in functions.most_common(top)
        },
    }
