"""chatd's log handler: a thread that logs never waits on stderr."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from chatd import observability
from tests.live import wait_for


class StalledStream:
    """A stderr that takes nothing until ``flowing`` is set, as a full pipe or a
    paused terminal does; then keeps what it was given."""

    def __init__(self):
        self.flowing = threading.Event()
        self.text = ""

    def write(self, text: str) -> None:
        assert self.flowing.wait(10), "the test never let the stream flow"
        self.text += text

    def flush(self) -> None:
        pass


class FailingStream(StalledStream):
    """A stderr whose first ``failures`` writes fail (non-blocking and full), and
    whose later ones are kept."""

    def __init__(self, failures: int):
        super().__init__()
        self.flowing.set()
        self.failures = failures

    def write(self, text: str) -> None:
        if self.failures:
            self.failures -= 1
            raise BlockingIOError("stderr is non-blocking and full")
        super().write(text)


@contextlib.contextmanager
def logger_writing_to(stream, name: str):
    """A logger whose only handler is chatd's, writing to ``stream``; afterwards the
    stream flows and the handler is closed, whatever the test did."""
    handler = observability._ChatdHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"chatd.test.{name}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield logger, handler
    finally:
        stream.flowing.set()
        logger.removeHandler(handler)
        handler.close()


def test_a_stalled_stderr_stalls_no_thread_that_logs(monkeypatch):
    stream = StalledStream()
    with logger_writing_to(stream, "stalled") as (logger, handler):
        started = time.monotonic()
        for i in range(500):
            logger.info("line %d", i)
        assert time.monotonic() - started < 1.0  # none of them waited on the stream
        assert stream.text == ""
        stream.flowing.set()
        wait_for(lambda: "line 499\n" in stream.text, 5, "the lines once stderr flows")
        assert stream.text.splitlines() == [f"line {i}" for i in range(500)]


def test_lines_past_the_limit_are_dropped_and_counted(monkeypatch):
    monkeypatch.setattr(observability, "MAX_WAITING_CHARS", 20 * len("line 00\n"))
    stream = StalledStream()
    with logger_writing_to(stream, "dropping") as (logger, handler):
        logger.info("first")  # the writer takes this one and waits on the stream
        wait_for(lambda: handler._waiting.qsize() == 0, 5, "the writer to take a line")
        for i in range(50):
            logger.info("line %02d", i)
        stream.flowing.set()
        wait_for(lambda: "dropped" in stream.text, 5, "the count of dropped lines")
        lines = stream.text.splitlines()
        assert lines[:21] == ["first"] + [f"line {i:02d}" for i in range(20)]
        assert "chatd: 30 log lines dropped: stderr did not keep up" in lines


def test_lines_a_failed_write_lost_are_counted_too():
    stream = FailingStream(failures=1)
    with logger_writing_to(stream, "failing") as (logger, handler):
        logger.info("lost")
        wait_for(lambda: stream.failures == 0, 5, "the failed write")
        logger.info("next")
        wait_for(lambda: "next" in stream.text, 5, "the next line")
        assert stream.text == "next\nchatd: 1 log lines dropped: stderr did not keep up\n"


def test_lines_dropped_before_a_write_that_fails_are_still_counted():
    stream = FailingStream(failures=2)
    with logger_writing_to(stream, "failing-twice") as (logger, handler):
        logger.info("lost first")
        wait_for(lambda: stream.failures == 1, 5, "the first failed write")
        logger.info("lost second")  # goes out with the count of the first: fails too
        wait_for(lambda: stream.failures == 0, 5, "the second failed write")
        logger.info("kept")
        wait_for(lambda: "kept" in stream.text, 5, "the line after")
        assert stream.text == "kept\nchatd: 2 log lines dropped: stderr did not keep up\n"


def test_the_count_of_dropped_lines_comes_in_the_logs_format():
    import json

    stream = FailingStream(failures=1)
    with logger_writing_to(stream, "json") as (logger, handler):
        handler.setFormatter(observability.JsonFormatter())
        logger.info("lost")
        wait_for(lambda: stream.failures == 0, 5, "the failed write")
        logger.info("next")
        wait_for(lambda: "dropped" in stream.text, 5, "the count")
        lines = [json.loads(line) for line in stream.text.splitlines()]
        assert [line["message"] for line in lines] == [
            "next",
            "chatd: 1 log lines dropped: stderr did not keep up",
        ]
        assert lines[1]["level"] == "warning" and lines[1]["request_id"] == "-"


def test_without_a_writer_thread_lines_are_written_as_they_come(monkeypatch):
    """Closed (a line logged during shutdown), or no thread to be had: as a plain
    StreamHandler would, rather than queue lines nobody will write."""
    stream = StalledStream()
    stream.flowing.set()

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    with logger_writing_to(stream, "threadless") as (logger, handler):
        monkeypatch.setattr(threading.Thread, "start", no_thread)
        logger.info("written now")
        assert stream.text == "written now\n"
        monkeypatch.undo()
        handler.close()
        logger.info("after close")
        assert stream.text == "written now\nafter close\n"


def test_at_exit_the_lines_waiting_are_written_first():
    stream = StalledStream()
    with logger_writing_to(stream, "exit") as (logger, handler):
        logger.info("last words")
        threading.Timer(0.2, stream.flowing.set).start()
        handler.flush()  # what logging.shutdown calls at exit
        assert stream.text == "last words\n"


def test_a_flush_gives_up_after_its_deadline_on_a_stderr_that_never_flows(monkeypatch):
    monkeypatch.setattr(observability, "FLUSH_WAIT_SECS", 0.3)
    stream = StalledStream()
    with logger_writing_to(stream, "stuck") as (logger, handler):
        logger.info("never written")
        started = time.monotonic()
        handler.flush()
        assert 0.25 <= time.monotonic() - started < 2.0


def test_a_closed_handler_ends_its_writer_after_the_lines_before():
    stream = StalledStream()
    stream.flowing.set()
    with logger_writing_to(stream, "closed") as (logger, handler):
        logger.info("before")
        logger.removeHandler(handler)
        handler.close()
        wait_for(
            lambda: not handler._writer.is_alive() and stream.text == "before\n",
            5,
            "the writer to write and end",
        )


F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in Python 3.10+ on Linux only


def test_a_worker_whose_stderr_nobody_reads_keeps_answering(tmp_path):
    """chatd's stderr is a 4 KiB pipe that nobody reads while 100 calls (an
    access line each, ~200 bytes) go over one kept-alive connection: every call
    is answered, and once the pipe is read the lines come out."""
    import fcntl
    import os

    import requests

    from tests.fakes import FakeOllama
    from tests.live import clean_env, run_chatd, write_config

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    try:
        with FakeOllama() as ollama:
            config = write_config(tmp_path / "chatd.toml", ollama_url=ollama.url)
            with run_chatd(config, clean_env(), output=write_end) as chatd:
                with requests.Session() as session:
                    for _ in range(100):
                        response = session.post(
                            chatd.url + "/chat",
                            json={
                                "model": "llama3.2",
                                "messages": [{"role": "user", "content": "hi"}],
                            },
                            timeout=5,
                        )
                        assert response.status_code == 200
                os.set_blocking(read_end, False)
                out = bytearray()

                def drained() -> bool:
                    try:
                        out.extend(os.read(read_end, 65536))
                    except BlockingIOError:
                        pass
                    return out.count(b"chatd.access") >= 100

                wait_for(drained, 10, "the access lines once stderr is read")
    finally:
        os.close(write_end)
        os.close(read_end)


def test_the_numbers_are_the_ones_the_readme_states():
    assert observability.MAX_WAITING_CHARS == 4 * 1024 * 1024
    assert observability.FLUSH_WAIT_SECS == 2.0


def test_chatd_logs_through_one_such_handler_however_often_it_is_set_up():
    for _ in range(2):
        observability.set_up_logging("info", "text")
    handlers = logging.getLogger("chatd").handlers
    assert [type(h) for h in handlers].count(observability._ChatdHandler) == 1


def test_a_process_that_exits_right_after_logging_writes_every_line_first():
    """The writer is a daemon thread: what it had not written when the process
    exits is written by logging's own shutdown, which flushes this handler."""
    import subprocess
    import sys

    code = (
        "import logging\n"
        "from chatd.observability import set_up_logging\n"
        "set_up_logging('info', 'text')\n"
        "log = logging.getLogger('chatd.exit')\n"
        "for i in range(2000):\n"
        "    log.info('line %d', i)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if " chatd.exit " in line]
    assert len(lines) == 2000 and lines[-1].endswith("line 1999")
