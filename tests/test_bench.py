"""The benchmark's own parts: canned answers, the slow and streaming upstream,
the arithmetic of its report and the layers of its profile.

`make bench` itself is not run here (it takes minutes and measures speed, which
tests must not assert); these check that what it reports is computed right.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests

from tests.live import ROOT, free_port, stop

BENCH = ROOT / "bench"
sys.path.append(str(BENCH))  # after site-packages: its names are generic

import canned  # noqa: E402
import cpu_profile  # noqa: E402
import report  # noqa: E402

GUNICORN_LOOP = (
    "<module> (gunicorn:6);ThreadWorker.run (gunicorn/workers/gthread.py:425);"
    "EpollSelector.select (selectors.py:468)"
)
REQUEST = (
    "_worker (concurrent/futures/thread.py:83);"
    "ThreadWorker.handle (gunicorn/workers/gthread.py:532);"
    "Flask.wsgi_app (flask/app.py:1511)"
)


def test_ollama_stream_splits_the_canned_content_and_ends_done():
    lines = [json.loads(line) for line in canned.ollama_stream(20)]
    assert len(lines) == 21
    assert "".join(line["message"]["content"] for line in lines) == canned.CONTENT
    assert [line["done"] for line in lines] == [False] * 20 + [True]
    assert lines[-1]["eval_count"] == canned.STATS["eval_count"]


@pytest.mark.parametrize(
    "stack, layer",
    [
        (GUNICORN_LOOP, "gunicorn"),
        (REQUEST + ";dispatch (chatd/api/chat.py:40);loads (json/__init__.py:346)", "chatd"),
        (REQUEST + ";parse_headers (http/client.py:243);Parser.parse (email/parser.py:53)", "http"),
        (REQUEST + ";Session.send (requests/sessions.py:703)", "requests"),
        (REQUEST + ";Logger.info (logging/__init__.py:1489)", "logging"),
        (REQUEST, "Flask"),
        ("Thread.run (threading.py:975)", "other"),
    ],
)
def test_a_sample_is_charged_to_its_innermost_known_layer(stack, layer):
    assert cpu_profile.layer_of(stack.split(";")).startswith(layer)


def test_summarize_adds_the_samples_of_every_worker(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text(f"{GUNICORN_LOOP} 30\n{REQUEST};dispatch (chatd/api/chat.py:40) 10\n")
    second.write_text(f"{GUNICORN_LOOP} 60\n")
    summary = cpu_profile.summarize([first, second])
    assert summary["samples"] == 100
    layers = summary["layers_percent"]
    assert layers[cpu_profile.LAYERS[-1][1]] == 90.0
    assert layers["chatd (validation, routing, mapping, dispatch, observability)"] == 10.0


def cell(key, connections, p50, wrk_errors=None, non_2xx=None, req_per_s=100.0):
    return {
        "target": key,
        "connections": connections,
        "p50_ms": p50,
        "req_per_s": req_per_s,
        "requests": 1000,
        "wrk_errors": wrk_errors or {},
        "non_2xx": non_2xx or {},
    }


def test_added_latency_is_against_the_baseline_at_the_same_concurrency():
    cells = [cell("nginx", 1, 0.02, req_per_s=40000), cell("nginx", 32, 0.3, req_per_s=70000)]
    cells += [cell("chat", 1, 0.8, req_per_s=1200), cell("chat", 32, 25.3, req_per_s=1400)]
    for c in cells:
        c["added_p50_ms"] = None
    report.add_baselines(cells, {"chat": "nginx"})
    assert [c["added_p50_ms"] for c in cells] == [None, None, pytest.approx(0.78), 25.0]
    assert cells[2]["p50_ratio"] == pytest.approx(40.0)
    assert [c.get("req_per_s_ratio") for c in cells] == [None, None, 0.03, 0.02]


def test_errors_count_sockets_and_the_larger_of_the_two_status_counts():
    errors = {"connect": 2, "read": 1, "write": 0, "timeout": 3, "status": 40}
    assert report.error_count(cell("x", 1, 1, errors, {"503": 45})) == 6 + 45
    assert report.error_count(cell("x", 1, 1, errors, {"503": 12})) == 6 + 40
    assert report.error_count(cell("x", 1, 1, {"status": 0}, {})) == 0


@pytest.fixture
def upstream():
    port = free_port()
    command = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
    command += ["--delay-ms", "100", "--pieces", "5", "--gap-ms", "20", "--max-seconds", "60"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert b"listening" in process.stdout.readline()
        yield f"http://127.0.0.1:{port}/api/chat"
    finally:
        stop(process, timeout=10)
        process.stdout.close()


def test_bench_upstream_answers_late_and_streams_on_schedule(upstream):
    body = {"model": "m", "messages": canned.MESSAGES}
    started = time.monotonic()
    answer = requests.post(upstream, json={**body, "stream": False}, timeout=5)
    assert time.monotonic() - started >= 0.09  # asyncio may wake a timer a tick early
    assert answer.json() == canned.OLLAMA_ANSWER

    started, arrivals = time.monotonic(), []
    with requests.post(upstream, json=body, stream=True, timeout=5) as streamed:
        for line in streamed.iter_lines():
            arrivals.append((time.monotonic() - started, json.loads(line)))
    assert [piece["done"] for _, piece in arrivals] == [False] * 5 + [True]
    # Five pieces 20 ms apart, not one burst: the fifth is sent 80 ms after the
    # first (the first may arrive a little late, so allow a margin).
    assert arrivals[4][0] - arrivals[0][0] >= 0.06

    missing = requests.post(upstream.replace("/api/chat", "/nope"), json=body, timeout=5)
    assert missing.status_code == 404


# -- the concurrent-streams mode (stream_load.py) ----------------------------------------

import stream_load  # noqa: E402


def test_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    assert stream_load.percentile(values, 50) == 50
    assert stream_load.percentile(values, 99) == 99
    assert stream_load.percentile([7.0, 3.0], 99) == 7
    assert stream_load.percentile([], 50) is None


def test_summarize_counts_completed_shed_and_failed_streams_apart():
    def done(first, gap, pieces=3):
        return stream_load.StreamResult(
            200, arrivals=[first + i * gap for i in range(pieces)], finished=True
        )

    results = [
        done(0.010, 0.250),
        done(0.030, 0.300),
        stream_load.StreamResult(503, retry_after=True),
        stream_load.StreamResult(503, retry_after=False),  # a 503 without Retry-After: failed
        stream_load.StreamResult(200, arrivals=[0.01, 0.2], finished=False),  # cut
        stream_load.StreamResult(error="ConnectionResetError"),
    ]
    summary = stream_load.summarize(results, pieces=3)
    assert summary["streams"] == 6
    assert (summary["completed"], summary["shed"], summary["failed"]) == (2, 1, 3)
    assert summary["errors"] == {
        "HTTP 503": 1,
        "incomplete stream": 1,
        "ConnectionResetError": 1,
    }
    assert summary["pieces"] == 3 + 3 + 2
    assert summary["first_piece_ms_p50"] == pytest.approx(10)
    assert summary["first_piece_ms_p99"] == pytest.approx(30)
    assert summary["gap_ms_p99"] == pytest.approx(300)


def test_the_stream_protocol_notes_status_pieces_and_end_across_reads():
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        result = stream_load.StreamResult()
        done = loop.create_future()
        protocol = stream_load.StreamProtocol(result, 0.0, b'"content":"', b"data: [DONE]", done)
        protocol.data_received(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-st")
        protocol.data_received(b'ream\r\n\r\n1f\r\ndata: {"delta":{"content":"a')
        protocol.data_received(b'"}}\n\n\r\n1f\r\ndata: {"delta":{"content":"b"}}\n\n')
        protocol.data_received(b"\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
        protocol.connection_lost(None)
        assert done.done()
    finally:
        loop.close()
    assert result.status == 200 and result.finished and not result.error
    assert len(result.arrivals) == 2


def test_a_shed_answer_is_seen_with_its_retry_after():
    result = stream_load.StreamResult()
    protocol = stream_load.StreamProtocol(result, 0.0, b"x", b"y", _Done())
    protocol.data_received(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\r\n{}")
    assert result.status == 503 and result.retry_after


class _Done:
    def done(self):
        return True


def test_the_stream_table_gives_chatd_gaps_as_ratios_to_direct():
    def cell(gap_p99, **extra):
        return {
            "completed": 10, "shed": 0, "failed": 0, "first_piece_ms_p50": 5.0,
            "first_piece_ms_p99": 9.0, "gap_ms_p99": gap_p99, "cpu_us_per_piece": 80.0,
            **extra,
        }  # fmt: skip

    table = report.streams_table(
        [{"streams": 10, "direct": cell(250.0), "chatd": cell(300.0, rss_kib_per_stream=64)}]
    )
    assert "| 300.0 (1.20x) |" in table
    assert "| 64 |" in table


def test_costs_are_cpu_over_pieces_and_memory_over_admitted_streams():
    cell = {"pieces": 4000}
    costs = stream_load.costs(cell, cpu_s=0.6, peak_rss_mib=150.0, idle_rss_mib=100.0, admitted=200)
    assert costs["cpu_us_per_piece"] == pytest.approx(150)  # 0.6 s / 4,000 pieces
    assert costs["rss_kib_per_stream"] == pytest.approx(256)  # 50 MiB / 200 streams
    nothing = stream_load.costs({"pieces": 0}, 0.1, 100.0, 100.0, 0)
    assert nothing == {"cpu_us_per_piece": 100_000, "rss_kib_per_stream": 0}


def test_stream_pieces_set_how_many_pieces_the_upstream_streams(tmp_path, monkeypatch):
    """--stream-pieces reaches the upstream's command line, and is bounded."""
    import run

    assert run.parse_args(["--streams", "400"]).stream_pieces == run.PIECES
    assert run.parse_args(["--streams", "400", "--stream-pieces", "2"]).stream_pieces == 2
    with pytest.raises(SystemExit):
        run.parse_args(["--stream-pieces", "1"])

    class Procs:
        def start(self, name, command, cpu, log):
            self.command = command
            return None

        def pinned(self, cpu, command):
            return command

    procs = Procs()
    monkeypatch.setattr(run, "wait_for_port", lambda *args: None)
    run.start_upstream(procs, tmp_path, run.STREAM_GAP_MS, pieces=2)
    assert procs.command[procs.command.index("--pieces") + 1] == "2"
