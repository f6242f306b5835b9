"""Benchmark chatd against its upstreams, side by side, on loopback.

    make bench                       # full: 3 runs x 10 s per cell, medians reported
    make bench BENCH_ARGS=--quick    # 1 run x 3 s per cell
    make bench BENCH_ARGS="--streams 250,1000,2000,4000"   # concurrent streams
    make bench BENCH_ARGS="--streams --quick"              # the same at 20 and 100
    .venv/bin/python bench/run.py [--quick] [--workers N] [--threads N]
        [--connections 1,32,96] [--targets chat-slow,...] [--no-profile]

What it starts, all on 127.0.0.1, all stopped at the end (also on Ctrl-C):

- nginx (nginx.conf.template): canned Ollama ``/api/chat`` and OpenAI
  ``/v1/chat/completions`` answers in a few µs, as fast as an upstream gets;
- upstream.py (asyncio): the same Ollama answer after 50 ms, or streamed as
  20 NDJSON pieces 10 ms apart, which stock nginx cannot do;
- forwarder.py under gunicorn with chatd's workers and threads, for two
  reference rows: gunicorn alone (hello-world WSGI) and the field's bare Flask
  + requests forwarder, the stack chatd is built on doing nothing else;
- chatd exactly as a user starts it, ``CHATD_CONFIG=<toml> gunicorn -c
  gunicorn.conf.py``, with the shipped defaults (workers, threads, log level
  info: one access line per request, written to a file). One change: the local
  Ollama's ``max_in_flight = 4`` is lifted, since nginx, unlike Ollama, serves
  every call at once.

wrk (post.lua) loads every target at 1, 32 and 96 connections;
stream_client.py times streamed pieces; py-spy then samples chatd's workers
under one more load (not measured) to show where their CPU goes. chatd (and
the forwarder) run on CPU 1; wrk, the upstreams and this script on CPU 0, so
chatd never shares a core with its load. Results go to stdout as markdown and to results/<date>.json
(<date>-quick.json for --quick). nginx and wrk are installed with apt-get
when missing.

With --streams, only the concurrent-streams mode runs: upstream.py streams 20
pieces 250 ms apart, and stream_load.py opens N streams at once against it
directly and then through chatd (shipped config, the same one change), with a
/health probe every 250 ms. Per N: completed and shed counts, first-piece and
largest-gap percentiles, chatd's CPU per streamed piece (its process tree's
CPU from /proc over the pieces, each call's set-up included) and RSS per open
stream (peak over the cell minus chatd's RSS before the first cell).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from string import Template

import cpu_profile
import procfs
import report
import requests
import stream_load
from canned import CONTENT, MESSAGES, OLLAMA_ANSWER, OPENAI_ANSWER, compact
from stream_client import JSON_HEADERS, stream_timings

from chatd.config import load_settings

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

CONNECTIONS = (1, 32, 96)
LOAD_CPU, CHATD_CPU = 0, 1
# The servers that run on CHATD_CPU (one at a time under load).
ON_CHATD_CPU = ("chatd", "forwarder")
# A request slower than this is a wrk "timeout" error rather than a latency.
WRK_TIMEOUT = "5s"
# wrk runs after which chatd's pools, caches and code paths are warm.
WARMUP_SECONDS, WARMUP_CONNECTIONS = 1, 8
# After wrk stops, requests it abandoned still finish and log their line.
SETTLE_SECONDS = 0.3
# The slow and the streaming upstream (upstream.py).
SLOW_MS, PIECES, GAP_MS = 50, 20, 10
STREAM_CALLS = 20
# The profiled run (not measured): this target and concurrency, this long.
PROFILE_TARGET, PROFILE_CONNECTIONS, PROFILE_SECONDS = "chat-ollama", 32, 8
START_TIMEOUT, STOP_TIMEOUT = 30, 15
# Apt packages for the tools; taskset is in util-linux.
TOOLS = {"nginx": "nginx", "wrk": "wrk", "taskset": "util-linux"}
# chatd's CPU busy with other processes above this share of a run: its numbers are suspect.
NOISE_PERCENT = 10
# The concurrent-streams mode: N streams at once, PIECES pieces STREAM_GAP_MS apart.
STREAM_LEVELS, QUICK_STREAM_LEVELS = (250, 1000, 2000, 4000), (20, 100)
STREAM_GAP_MS = 250
# A stream that has not ended by then is counted failed ("client deadline").
STREAM_DEADLINE = 60
# Between cells: chatd's threads and the upstream's connections wind down.
STREAM_SETTLE_SECONDS = 3
RSS_SAMPLE_SECONDS = 0.5


@dataclass(frozen=True)
class Mode:
    name: str
    runs: int
    seconds: int


FULL, QUICK = Mode("full", 3, 10), Mode("quick", 1, 3)


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    #: Who answers: "nginx", "upstream" (upstream.py) or "chatd"; its CPU and memory are measured.
    server: str
    path: str
    body: dict
    #: The direct target whose p50 this one adds to (None for a direct one).
    baseline: str | None = None
    #: What a good answer holds (default: the canned content, or a stream's end).
    expect: str | None = None

    @property
    def payload(self) -> bytes:
        return compact(self.body)


def chat_body(model: str, **extra) -> dict:
    return {"model": model, "messages": MESSAGES, **extra}


TARGETS = [
    Target("nginx", "upstream direct: nginx /api/chat", "nginx", "/api/chat",
           chat_body("llama3.2", stream=False)),
    Target("hello", "reference: gunicorn gthread alone, hello-world WSGI", "forwarder",
           "/hello", chat_body("llama3.2"), "nginx", expect='"ok"'),
    Target("forwarder", "reference: bare Flask + requests forwarder → nginx", "forwarder",
           "/api/chat", chat_body("llama3.2", stream=False), "nginx"),
    Target("chat-ollama", "chatd /chat → Ollama-native", "chatd", "/chat",
           chat_body("llama3.2"), "nginx"),
    Target("chat-openai", "chatd /chat → OpenAI-style", "chatd", "/chat",
           chat_body("openrouter/meta/llama-3"), "nginx"),
    Target("v1-ollama", "chatd /v1/chat/completions → Ollama", "chatd", "/v1/chat/completions",
           chat_body("ollama/llama3.2"), "nginx"),
    Target("slow", f"upstream direct: {SLOW_MS} ms answer", "upstream", "/api/chat",
           chat_body("llama3.2", stream=False)),
    Target("chat-slow", f"chatd /chat → {SLOW_MS} ms upstream", "chatd", "/chat",
           chat_body("x:cloud"), "slow"),
    Target("stream", "upstream direct: stream", "upstream", "/api/chat",
           chat_body("llama3.2", stream=True)),
    Target("chat-stream", "chatd /chat stream → stream upstream", "chatd", "/chat",
           chat_body("x:cloud", stream=True), "stream"),
]  # fmt: skip
TARGET = {target.key: target for target in TARGETS}


# -- tools and processes ------------------------------------------------------------


def which(tool: str) -> str | None:
    # nginx lives in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def ensure_tools() -> dict[str, str]:
    """Return the tools' paths, installing missing ones with apt-get; exit if that fails."""
    missing = [tool for tool in TOOLS if not which(tool)]
    if missing:
        packages = sorted({TOOLS[tool] for tool in missing})
        print(f"bench: {', '.join(missing)} missing; installing {' '.join(packages)}", flush=True)
        # RUNLEVEL=1: the package's scripts must not start a system nginx on port 80.
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
        for command in ([*apt, "update"], [*apt, "install", "-y", *packages]):
            try:
                # apt's chatter goes to stderr: stdout is for the report.
                subprocess.run(command, env=env, check=True, timeout=900, stdout=sys.stderr)
            except (OSError, subprocess.SubprocessError) as e:
                sys.exit(
                    f"bench: `{shlex.join(command)}` failed ({e}).\n"
                    f"bench: install {' '.join(packages)} yourself (as root), then run again."
                )
    paths = {tool: which(tool) for tool in TOOLS}
    still = [tool for tool, path in paths.items() if path is None]
    if still:
        sys.exit(f"bench: {', '.join(still)} still not found after apt-get install")
    return paths


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    # Runs in the child before exec: should this script be SIGKILLed, its
    # finally never runs, so the kernel stops the child instead.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(command: list[str], **kwargs) -> subprocess.Popen:
    """Start a child in its own session: Ctrl-C reaches only this script, which
    then stops the children in order (gunicorn first, while its upstreams still answer)."""
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,
        **kwargs,
    )


class Processes:
    """The long-lived processes the benchmark starts, stopped in reverse order."""

    def __init__(self, pin: bool):
        self.pin = pin
        self.started: list[tuple[str, subprocess.Popen, float]] = []

    def pinned(self, cpu: int, command: list[str]) -> list[str]:
        return ["taskset", "-c", str(cpu), *command] if self.pin else command

    def start(self, name, command, *, cpu: int, log: Path, stop_timeout=None, **kwargs):
        with open(log, "ab") as out:
            process = spawn(
                self.pinned(cpu, command), stdout=out, stderr=subprocess.STDOUT, **kwargs
            )
        self.started.append((name, process, stop_timeout or STOP_TIMEOUT))
        return process

    def stop_all(self) -> None:
        while self.started:
            stop(*self.started.pop())


def stop(name: str, process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM (nginx: fast shutdown; gunicorn: graceful), then SIGKILL to its session."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"bench: {name} did not stop in {timeout:g} s; killing it", file=sys.stderr)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: only what it started
        except ProcessLookupError:
            pass
        process.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for_port(port: int, process: subprocess.Popen, name: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited {process.returncode}:\n{tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on port {port} in {START_TIMEOUT} s:\n{tail(log)}")


# -- the upstreams and chatd ----------------------------------------------------------


def nginx_string(data: dict) -> str:
    """``data`` as JSON fit for a single-quoted nginx string (no quote, backslash or $)."""
    text = compact(data).decode()
    if any(c in text for c in "'\\$"):
        raise ValueError("a canned answer has a character nginx would need escaped")
    return text


def start_nginx(procs: Processes, tmp: Path, nginx: str) -> tuple[subprocess.Popen, int, list]:
    prefix = tmp / "nginx"
    prefix.mkdir()
    port = free_port()
    config = Template((BENCH / "nginx.conf.template").read_text()).substitute(
        prefix=prefix,
        port=port,
        ollama_answer=nginx_string(OLLAMA_ANSWER),
        openai_answer=nginx_string(OPENAI_ANSWER),
    )
    (prefix / "nginx.conf").write_text(config)
    command = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    log = prefix / "stderr.log"
    process = procs.start("nginx", command, cpu=LOAD_CPU, log=log)
    wait_for_port(port, process, "nginx", log)
    return process, port, procs.pinned(LOAD_CPU, command)


def start_upstream(
    procs: Processes, tmp: Path, gap_ms: float = GAP_MS, pieces: int = PIECES
) -> tuple[subprocess.Popen, int, list]:
    port = free_port()
    command = [
        sys.executable,
        str(BENCH / "upstream.py"),
        *("--port", str(port), "--delay-ms", str(SLOW_MS)),
        *("--pieces", str(pieces), "--gap-ms", str(gap_ms)),
    ]
    log = tmp / f"upstream-{port}.log"
    process = procs.start("upstream.py", command, cpu=LOAD_CPU, log=log)
    wait_for_port(port, process, "upstream.py", log)
    return process, port, procs.pinned(LOAD_CPU, command)


def chatd_env(config: Path) -> dict[str, str]:
    """This environment without chatd settings, keys, proxies or WEB_CONCURRENCY, plus ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (
            k.startswith("CHATD_")
            or k.endswith("_API_KEY")
            or k.lower().endswith("_proxy")
            or k in ("WEB_CONCURRENCY", "PROMETHEUS_MULTIPROC_DIR")
        )
    }
    # Any value registers the provider; the canned upstreams never check it.
    env.update(CHATD_CONFIG=str(config), OPENROUTER_API_KEY="bench", OLLAMA_API_KEY="bench")
    return env


def write_chatd_config(tmp: Path, nginx_port: int, upstream_port: int, args) -> Path:
    """A [chatd] table with only the upstream URLs (and --workers/--threads when given)."""
    fields = {
        "ollama_url": f"http://127.0.0.1:{nginx_port}",
        "openrouter_url": f"http://127.0.0.1:{nginx_port}/v1",
        # "x:cloud" models go to Ollama Cloud: here the slow and streaming upstream.
        "ollama_cloud_url": f"http://127.0.0.1:{upstream_port}",
    }
    if args.workers:
        fields["workers"] = args.workers
    if args.threads:
        fields["threads"] = args.threads
    lines = ["# Written by bench/run.py: chatd's defaults, upstreams on loopback.", "[chatd]"]
    # A JSON string or integer is also a TOML one.
    lines += [f"{name} = {json.dumps(value)}" for name, value in fields.items()]
    # nginx answers every call at once; Ollama's built-in limit of 4 would queue them.
    lines += ["", "[chatd.providers.ollama]", "max_in_flight = 0"]
    path = tmp / "chatd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_chatd(procs: Processes, tmp: Path, config: Path, settings) -> tuple:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if not gunicorn.exists():
        raise RuntimeError(f"{gunicorn} not found: run `make install` first")
    port = free_port()
    command = [str(gunicorn), "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}"]
    log = tmp / "chatd.log"
    # Idle at the end, it stops at once; a hung one gets its graceful timeout.
    stop_timeout = getattr(settings, "graceful_timeout_secs", 30) + 15
    process = procs.start(
        "chatd",
        command,
        cpu=CHATD_CPU,
        log=log,
        stop_timeout=stop_timeout,
        cwd=ROOT,
        env=chatd_env(config),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    # Ready when /health answers and every worker has booted.
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chatd exited {process.returncode}:\n{tail(log)}")
        try:
            healthy = requests.get(url + "/health", timeout=1).status_code == 200
        except requests.RequestException:
            healthy = False
        if healthy and len(procfs.process_tree(process.pid)) >= 1 + settings.workers:
            shown = f"CHATD_CONFIG={config} {shlex.join(procs.pinned(CHATD_CPU, command))}"
            return process, port, log, shown
        time.sleep(0.1)
    raise RuntimeError(f"chatd was not ready in {START_TIMEOUT} s:\n{tail(log)}")


def start_forwarder(procs: Processes, tmp: Path, nginx_port: int, settings) -> tuple:
    """forwarder.py under gunicorn, with chatd's workers and threads, on chatd's CPU."""
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("gunicorn")),
        *("-k", "gthread", "-w", str(settings.workers), "--threads", str(settings.threads)),
        *("--bind", f"127.0.0.1:{port}", "forwarder:app"),
    ]
    log = tmp / "forwarder.log"
    env = {k: v for k, v in chatd_env(tmp).items() if k != "CHATD_CONFIG"}
    env["BENCH_UPSTREAM"] = f"http://127.0.0.1:{nginx_port}"
    # cwd bench/: gunicorn reads ./gunicorn.conf.py when there is one, and chatd's is not for it.
    process = procs.start("forwarder", command, cpu=CHATD_CPU, log=log, env=env, cwd=BENCH)
    wait_for_port(port, process, "forwarder", log)
    return process, port, procs.pinned(CHATD_CPU, command)


class ChatdLog:
    """chatd's stderr (gunicorn's log and chatd's access lines), read run by run."""

    # "... INFO chatd.access [request id] POST /chat 200 provider=...": the status after the path.
    ACCESS = re.compile(r" chatd\.access\b.*? (?:GET|POST|HEAD|PUT|DELETE|OPTIONS) \S+ (\d{3}) ")
    PROBLEM = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]| (WARNING|ERROR|CRITICAL) |^Traceback")
    MAX_KEPT = 10_000

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.problems: list[str] = []  # every warning line so far, for the report

    def read_new(self) -> dict:
        """Count what was logged since the last call: statuses, problems, worker boots."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        data = data[: data.rfind(b"\n") + 1]  # whole lines only; the rest comes next time
        self.offset += len(data)
        statuses, problems, boots = Counter(), 0, 0
        for line in data.decode("utf-8", "replace").splitlines():
            access = self.ACCESS.search(line)
            if access:
                statuses[access.group(1)] += 1
            elif "Booting worker" in line:
                boots += 1
            elif self.PROBLEM.search(line):
                problems += 1
                if len(self.problems) < self.MAX_KEPT:
                    self.problems.append(line)
        return {
            "access_lines": sum(statuses.values()),
            "non_2xx": {s: n for s, n in sorted(statuses.items()) if not s.startswith("2")},
            "problem_lines": problems,
            "worker_boots": boots,
        }


@dataclass
class Servers:
    """Where each kind of server listens, and the pid whose process tree is measured."""

    urls: dict[str, str]
    pids: dict[str, int]
    chatd_port: int
    chatd_log: ChatdLog

    def url(self, target: Target) -> str:
        return self.urls[target.server] + target.path


def check_target(servers: Servers, target: Target) -> None:
    """One call before any load: the target answers 200 with the canned content."""
    response = requests.post(
        servers.url(target), data=target.payload, headers=JSON_HEADERS, timeout=10
    )
    if target.expect:
        expected = target.expect
    elif target.body.get("stream"):
        expected = "data: [DONE]" if target.server == "chatd" else '"done":true'
    else:
        expected = CONTENT
    if response.status_code != 200 or expected not in response.text:
        raise RuntimeError(f"{target.label}: {response.status_code} {response.text[:500]}")


# -- load -----------------------------------------------------------------------------


def wrk_command(url: str, connections: int, seconds: float) -> list[str]:
    threads = 2 if connections >= 64 else 1
    return [
        *("wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s"),
        *("--timeout", WRK_TIMEOUT, "-s", str(BENCH / "post.lua"), url),
    ]


def run_wrk(procs: Processes, url: str, target: Target, connections: int, seconds, midway=None):
    """Run wrk; return its result line, and what ``midway()`` returned halfway through."""
    command = procs.pinned(LOAD_CPU, wrk_command(url, connections, seconds))
    env = {**os.environ, "BENCH_BODY": target.payload.decode()}
    wrk = spawn(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = None
        if midway:
            time.sleep(seconds / 2)
            seen = midway()
        stdout, stderr = wrk.communicate(timeout=seconds + 60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    for line in stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.removeprefix("BENCH_RESULT ")), seen
    raise RuntimeError(f"wrk gave no result (exit {wrk.returncode}):\n{stdout}{stderr}")


def measure(procs: Processes, servers: Servers, target: Target, connections: int, seconds):
    """One wrk run of one cell, with the answering server's CPU, memory and log."""
    pid, chatd = servers.pids[target.server], servers.pids["chatd"]

    def split():
        # How the connections fell on gunicorn's workers (each worker accepts for itself).
        counts = procfs.connections_per_process(servers.chatd_port) or {}
        return {worker: n for worker, n in counts.items() if worker != chatd}

    before = procfs.Snapshot.take()
    result, per_worker = run_wrk(
        procs,
        servers.url(target),
        target,
        connections,
        seconds,
        midway=split if target.server == "chatd" else None,
    )
    # At once: requests wrk abandoned would still use CPU with no request counted.
    after = procfs.Snapshot.take()
    time.sleep(SETTLE_SECONDS)
    wall = after.at - before.at
    cpu = after.tree_cpu(pid) - before.tree_cpu(pid)
    # chatd's CPU busy with anything but the server measured: another job on the machine.
    pinned = pid if target.server in ON_CHATD_CPU else chatd
    chatd_other = after.cores[CHATD_CPU] - before.cores[CHATD_CPU]
    chatd_other -= after.tree_cpu(pinned) - before.tree_cpu(pinned)
    ours = set(procfs.tree(before.procs, os.getpid()) + procfs.tree(after.procs, os.getpid()))
    return {
        "requests": result["requests"],
        "req_per_s": result["requests"] / (result["duration_us"] / 1e6),
        **{f"{p}_ms": result[f"{p}_us"] / 1000 for p in ("p50", "p90", "p99", "max")},
        "cpu_s": cpu,
        "cpu_us_per_req": cpu * 1e6 / max(result["requests"], 1),
        "cpu_percent": 100 * cpu / wall,
        **procfs.memory_mib(pid),
        "wrk_errors": result["errors"],
        "chatd_log": servers.chatd_log.read_new(),
        "connections_per_worker": per_worker,
        # 100 means wrk and the upstream had no CPU to spare: a direct row's limit is theirs.
        "load_cpu_busy_percent": 100 * (after.cores[LOAD_CPU] - before.cores[LOAD_CPU]) / wall,
        "chatd_cpu_other_percent": 100 * chatd_other / wall,
        "busiest_other_processes": procfs.busiest_others(before, after, ours),
    }


def selected_targets(keys: str | None) -> list[Target]:
    """The targets named (all when None), each with the direct target it is compared to."""
    if not keys:
        return TARGETS
    wanted = set(keys.split(","))
    wanted |= {TARGET[key].baseline for key in wanted if TARGET[key].baseline}
    return [target for target in TARGETS if target.key in wanted]


def warm_up(procs: Processes, servers: Servers, targets: list[Target]) -> dict:
    """Send chatd and the forwarder traffic first: pools, caches and code paths warm."""
    served = {}
    for target in targets:
        if target.server in ON_CHATD_CPU:
            url = servers.url(target)
            result, _ = run_wrk(procs, url, target, WARMUP_CONNECTIONS, WARMUP_SECONDS)
            served[target.key] = result["requests"]
    served["chatd_log"] = servers.chatd_log.read_new()
    return served


def run_cells(procs, servers: Servers, mode: Mode, targets: list[Target], levels) -> list[dict]:
    """Every target at every concurrency, mode.runs times, the runs interleaved so
    that a slow drift or a burst of other work spreads over all cells."""
    runs = defaultdict(list)
    total, n = mode.runs * len(levels) * len(targets), 0
    for run in range(mode.runs):
        for connections in levels:
            for target in targets:
                n += 1
                result = measure(procs, servers, target, connections, mode.seconds)
                runs[target.key, connections].append(result)
                progress(
                    f"[{n}/{total}] run {run + 1}: {target.label}, {connections} conns: "
                    f"{result['req_per_s']:,.0f} req/s, p50 {report.ms(result['p50_ms'])} ms"
                )
    cells = [
        report.summarize(target.key, target.label, connections, runs[target.key, connections])
        for connections in levels
        for target in targets
    ]
    report.add_baselines(cells, {t.key: t.baseline for t in targets if t.baseline})
    return cells


def profile_worker(procs: Processes, servers: Servers, tmp: Path) -> dict | None:
    """One more, unmeasured, wrk run with py-spy on a chatd worker: where its CPU goes."""
    if not cpu_profile.py_spy():
        progress("bench: py-spy not installed (the [bench] extra): no profile")
        return None
    target = TARGET[PROFILE_TARGET]
    # Every worker: gunicorn may have given all the connections to one of them.
    workers = procfs.process_tree(servers.pids["chatd"])[1:]
    raws = [tmp / f"profile-{pid}.txt" for pid in workers]
    progress(f"profiling chatd's workers: {target.label}, {PROFILE_CONNECTIONS} conns ...")
    spies = [
        cpu_profile.record(pid, PROFILE_SECONDS, raw)
        for pid, raw in zip(workers, raws, strict=True)
    ]
    run_wrk(procs, servers.url(target), target, PROFILE_CONNECTIONS, PROFILE_SECONDS + 2)
    problems = []
    for spy in spies:
        try:
            problems.append(spy.communicate(timeout=PROFILE_SECONDS + 30)[1].strip())
        except subprocess.TimeoutExpired:
            spy.kill()
            problems.append("py-spy did not finish")
    servers.chatd_log.read_new()
    raws = [raw for raw in raws if raw.exists() and raw.stat().st_size]
    if not raws:
        progress(f"bench: py-spy gave no samples: {' '.join(problems)[-300:]}")
        return None
    return {
        "target": target.label,
        "connections": PROFILE_CONNECTIONS,
        "command": f"py-spy record --gil --format raw --rate {cpu_profile.RATE} "
        f"--duration {PROFILE_SECONDS} --pid <each worker>",
        **cpu_profile.summarize(raws),
    }


# -- concurrent streams --------------------------------------------------------------


class PeakRss:
    """The largest RSS of a process tree, sampled in a thread while a cell runs."""

    def __init__(self, pid: int):
        import threading

        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        for _ in range(int(STREAM_DEADLINE * 2 / RSS_SAMPLE_SECONDS)):
            self.peak = max(self.peak, procfs.memory_mib(self.pid)["rss_mib"])
            if self._stop.wait(RSS_SAMPLE_SECONDS):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def stream_cell(
    port: int,
    path: str,
    body: bytes,
    n: int,
    *,
    sse: bool,
    pid: int,
    idle_rss: float = 0.0,
    pieces: int = PIECES,
) -> dict:
    """Open ``n`` streams at once against one server; its CPU and memory while they ran."""
    before = procfs.Snapshot.take()
    with PeakRss(pid) as rss:
        results, health = asyncio.run(
            stream_load.open_streams(
                "127.0.0.1", port, path, body, n, sse=sse, timeout=STREAM_DEADLINE, health=sse
            )
        )
    after = procfs.Snapshot.take()
    cell = stream_load.summarize(results, pieces)
    cpu = after.tree_cpu(pid) - before.tree_cpu(pid)
    cell.update(
        cpu_s=cpu,
        wall_s=after.at - before.at,
        peak_rss_mib=rss.peak,
        admitted=sum(1 for r in results if r.status == 200),
        health_ms_max=max(health) if health else None,
        health_probes=len(health),
        load_cpu_busy_percent=100
        * (after.cores[LOAD_CPU] - before.cores[LOAD_CPU])
        / (after.at - before.at),
    )
    cell.update(stream_load.costs(cell, cpu, rss.peak, idle_rss, cell["admitted"]))
    return cell


def stream_benchmark(procs: Processes, tmp: Path, tools: dict, args, levels) -> dict:
    """The concurrent-streams mode: each N against the upstream direct, then chatd."""
    started = time.monotonic()
    machine = machine_info(tools)
    pieces = args.stream_pieces
    upstream, port, upstream_command = start_upstream(procs, tmp, STREAM_GAP_MS, pieces)
    config = write_chatd_config(tmp, port, port, args)
    settings = load_settings(str(config), environ=chatd_env(config))
    chatd, chatd_port, chatd_log, chatd_command = start_chatd(procs, tmp, config, settings)
    log = ChatdLog(chatd_log)
    progress(f"chatd: {chatd_command}")
    direct_body = compact(chat_body("llama3.2", stream=True))
    chatd_body = compact(chat_body("x:cloud", stream=True))
    # Warm: each worker imports lazily what a stream needs, and its pool connects.
    warm = stream_load.summarize(
        asyncio.run(
            stream_load.open_streams(
                "127.0.0.1", chatd_port, "/chat", chatd_body, 8, sse=True, timeout=30
            )
        )[0],
        pieces,
    )
    if warm["completed"] != 8:
        raise RuntimeError(f"chatd did not stream: {warm}\n{tail(chatd_log)}")
    log.read_new()
    idle_rss = procfs.memory_mib(chatd.pid)["rss_mib"]
    rows = []
    for n in levels:
        progress(f"streams: {n} at once, upstream direct ...")
        direct = stream_cell(
            port, "/api/chat", direct_body, n, sse=False, pid=upstream.pid, pieces=pieces
        )
        direct.pop("rss_kib_per_stream")  # the upstream's idle RSS was not taken
        time.sleep(STREAM_SETTLE_SECONDS)
        progress(f"streams: {n} at once, through chatd ...")
        through = stream_cell(
            chatd_port,
            "/chat",
            chatd_body,
            n,
            sse=True,
            pid=chatd.pid,
            idle_rss=idle_rss,
            pieces=pieces,
        )
        through["chatd_log"] = log.read_new()
        rows.append({"streams": n, "direct": direct, "chatd": through})
        progress(report.stream_row_text(rows[-1]))
        time.sleep(STREAM_SETTLE_SECONDS)
    return {
        "date": datetime.date.today().isoformat(),
        "mode": {"name": "streams", "levels": list(levels)},
        "machine": machine,
        "pinning": (
            f"chatd (gunicorn master and workers) on CPU {CHATD_CPU}; upstream.py and the "
            f"stream client (bench/run.py) on CPU {LOAD_CPU}"
            if procs.pin
            else "none (CPUs 0 and 1 are not both available): numbers are not comparable"
        ),
        "chatd_settings": {"workers": settings.workers, "threads": settings.threads},
        "commands": {
            "upstream": shlex.join(upstream_command),
            "chatd": chatd_command,
            "chatd_config": config.read_text(),
        },
        "stream": {"pieces": pieces, "gap_ms": STREAM_GAP_MS, "deadline_s": STREAM_DEADLINE},
        "idle_rss_mib": idle_rss,
        "rows": rows,
        "chatd_log_problems": report.distinct_problems(log.problems),
        "loadavg_at_end": loadavg(),
        "elapsed_s": time.monotonic() - started,
    }


# -- the report ------------------------------------------------------------------------


def machine_info(tools: dict[str, str]) -> dict:
    def package(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    def tool_version(command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        return (done.stdout + done.stderr).strip().splitlines()[0]

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu_model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
        platform.processor(),
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {n: package(n) for n in ("chatd", "flask", "werkzeug", "gunicorn", "requests")},
        "nginx": tool_version([tools["nginx"], "-v"]),
        "wrk": tool_version([tools["wrk"], "-v"]),
        "loadavg_at_start": loadavg(),
    }


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def benchmark(procs: Processes, tmp: Path, tools: dict, args, mode: Mode) -> dict:
    started = time.monotonic()
    machine = machine_info(tools)
    nginx, nginx_port, nginx_command = start_nginx(procs, tmp, tools["nginx"])
    upstream, upstream_port, upstream_command = start_upstream(procs, tmp)
    config = write_chatd_config(tmp, nginx_port, upstream_port, args)
    settings = load_settings(str(config), environ=chatd_env(config))
    chatd, chatd_port, chatd_log, chatd_command = start_chatd(procs, tmp, config, settings)
    forwarder, forwarder_port, forwarder_command = start_forwarder(procs, tmp, nginx_port, settings)
    servers = Servers(
        urls={
            "nginx": f"http://127.0.0.1:{nginx_port}",
            "upstream": f"http://127.0.0.1:{upstream_port}",
            "chatd": f"http://127.0.0.1:{chatd_port}",
            "forwarder": f"http://127.0.0.1:{forwarder_port}",
        },
        pids={
            "nginx": nginx.pid,
            "upstream": upstream.pid,
            "chatd": chatd.pid,
            "forwarder": forwarder.pid,
        },
        chatd_port=chatd_port,
        chatd_log=ChatdLog(chatd_log),
    )
    progress(f"chatd: {chatd_command}")
    targets = selected_targets(args.targets)
    for target in targets:
        check_target(servers, target)
    progress(f"warming up chatd ({WARMUP_SECONDS} s per target) ...")
    warm = warm_up(procs, servers, targets)
    cells = run_cells(procs, servers, mode, targets, args.connections)
    profile = None
    if args.profile and TARGET[PROFILE_TARGET] in targets:
        profile = profile_worker(procs, servers, tmp)
    streaming = {}
    if TARGET["chat-stream"] in targets:
        progress(f"streaming: {STREAM_CALLS} sequential calls each way ...")
        for label, key in (("upstream direct", "stream"), ("through chatd", "chat-stream")):
            target = TARGET[key]
            sse = target.server == "chatd"  # chatd answers SSE, the upstream Ollama NDJSON
            streaming[label] = stream_timings(
                servers.url(target), target.payload, sse, STREAM_CALLS
            )
    servers.chatd_log.read_new()
    memory = procfs.memory_mib(chatd.pid)
    by_cell = {(cell["target"], cell["connections"]): cell for cell in cells}

    def headline(key: str, connections: int, field: str):
        cell = by_cell.get((key, connections))
        return cell and cell[field]

    return {
        "date": datetime.date.today().isoformat(),
        "mode": {"name": mode.name, "runs": mode.runs, "seconds": mode.seconds},
        "machine": machine,
        "pinning": (
            f"chatd (gunicorn master and workers) on CPU {CHATD_CPU}; wrk, nginx, "
            f"upstream.py and bench/run.py on CPU {LOAD_CPU}"
            if procs.pin
            else "none (CPUs 0 and 1 are not both available): numbers are not comparable"
        ),
        "chatd_settings": {
            "workers": settings.workers,
            "threads": settings.threads,
            "log_level": settings.log_level,
            "access_log": "one line per request, to a file",
        },
        "commands": {
            "nginx": shlex.join(nginx_command),
            "upstream": shlex.join(upstream_command),
            "chatd": chatd_command,
            "chatd_config": config.read_text(),
            "forwarder": shlex.join(forwarder_command),
            "wrk": "BENCH_BODY=<target body> "
            + shlex.join(procs.pinned(LOAD_CPU, wrk_command("<url>", 32, mode.seconds)))
            + "  (-t2 from 64 connections)",
        },
        "targets": [
            {"key": t.key, "label": t.label, "server": t.server, "path": t.path, "body": t.body}
            for t in targets
        ],
        "warmup_requests": warm,
        "cells": cells,
        "streaming": streaming,
        "profile": profile,
        "memory_at_end": memory,
        "headline": {
            "chat_added_p50_ms_at_1_connection": headline("chat-ollama", 1, "added_p50_ms"),
            "chat_req_per_s_at_32_connections": headline("chat-ollama", 32, "req_per_s"),
            "rss_mib": memory["rss_mib"],
            "workers_rss_mib": memory["children_rss_mib"],
            "pss_mib": memory["pss_mib"],
            "workers": settings.workers,
        },
        "warnings": report.warnings_for(cells, CHATD_CPU, NOISE_PERCENT),
        "chatd_log_problems": report.distinct_problems(servers.chatd_log.problems),
        "loadavg_at_end": loadavg(),
        "elapsed_s": time.monotonic() - started,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark chatd against its upstreams.")
    parser.add_argument("--quick", action="store_true", help="1 run x 3 s per cell")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: the config's)")
    parser.add_argument("--threads", type=int, help="threads per worker (default: the config's)")
    parser.add_argument(
        "--connections",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=CONNECTIONS,
        help="comma-separated concurrency levels (default: %(default)s)",
    )
    parser.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="skip the py-spy run that shows where a worker's CPU goes",
    )
    parser.add_argument(
        "--streams",
        nargs="?",
        const="",
        type=lambda text: tuple(int(n) for n in text.split(",")) if text else (),
        help="run only the concurrent-streams mode, at these comma-separated N "
        f"(default {','.join(map(str, STREAM_LEVELS))}; with --quick "
        f"{','.join(map(str, QUICK_STREAM_LEVELS))})",
    )
    parser.add_argument(
        "--stream-pieces",
        type=int,
        default=PIECES,
        help="pieces per stream in the concurrent-streams mode (default: %(default)s); "
        "runs at 2 and at 20 split a stream's set-up cost from its cost per piece",
    )
    parser.add_argument(
        "--targets", help=f"comma-separated target keys, of: {', '.join(TARGET)} (default: all)"
    )
    args = parser.parse_args(argv)
    for name in ("workers", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.streams and not all(1 <= n <= stream_load.MAX_STREAMS for n in args.streams):
        parser.error(f"--streams must be 1 to {stream_load.MAX_STREAMS}")
    if not 2 <= args.stream_pieces <= 1000:
        parser.error("--stream-pieces must be 2 to 1000")
    if not args.connections or min(args.connections) < 1:
        parser.error("--connections must be positive numbers")
    unknown = set(args.targets.split(",")) - set(TARGET) if args.targets else set()
    if unknown:
        parser.error(f"unknown --targets: {', '.join(sorted(unknown))}")
    return args


def raise_on_sigterm(signum, frame):
    # Turn `kill` into an exception, so the finally below stops every process.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    tools = ensure_tools()
    pin = {LOAD_CPU, CHATD_CPU} <= os.sched_getaffinity(0)
    if pin:
        os.sched_setaffinity(0, {LOAD_CPU})  # this script's own work stays off chatd's CPU
    else:
        progress(f"bench: CPUs {LOAD_CPU} and {CHATD_CPU} are not both available: not pinning")
    procs = Processes(pin)
    tmp = Path(tempfile.mkdtemp(prefix="chatd-bench-"))
    keep = False  # the logs, when something failed
    try:
        if args.streams is not None:
            levels = args.streams or (QUICK_STREAM_LEVELS if args.quick else STREAM_LEVELS)
            results = stream_benchmark(procs, tmp, tools, args, levels)
        else:
            results = benchmark(procs, tmp, tools, args, mode)
    except KeyboardInterrupt:
        progress("bench: interrupted")
        return 130
    except (RuntimeError, subprocess.SubprocessError, requests.RequestException) as e:
        keep = True
        progress(f"bench: {e}")
        return 1
    except Exception:
        keep = True
        raise
    finally:
        procs.stop_all()
        if keep:
            progress(f"bench: logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.streams is not None:
        name = f"{results['date']}-streams{'-quick' if args.quick else ''}.json"
        path = report.write_results(results, BENCH / "results" / name)
        report.print_stream_report(results, str(path.relative_to(ROOT)))
        return 0
    name = results["date"] + ("" if mode is FULL else f"-{mode.name}") + ".json"
    path = report.write_results(results, BENCH / "results" / name)
    report.print_report(results, str(path.relative_to(ROOT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
