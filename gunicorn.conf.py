"""gunicorn settings for chatd.

chatd is I/O-bound: each call waits seconds to minutes on an upstream model,
so it runs few processes with many threads (gthread), one thread per call in
flight. Values come from chatd's own config ($CHATD_CONFIG, default
config/chatd.toml) so there is one place to set them; gunicorn's command-line
flags still win (the tests pass --bind 127.0.0.1:<free port>).

Run with `chatd --config PATH`, or `CHATD_CONFIG=PATH gunicorn -c gunicorn.conf.py`.
"""

import os
import shutil
import tempfile

from chatd.config import ConfigError, check_exposure, load_settings

try:
    _settings = load_settings()
except ConfigError as e:
    # One clear line rather than gunicorn's "Failed to read config file" traceback.
    raise SystemExit(f"chatd: {e}") from None

# Metrics: every worker writes its values under one directory that /metrics
# sums (prometheus_client's multiprocess mode). Set before any worker starts,
# and kept across SIGHUP reloads (this file runs again, the env stays).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="chatd-metrics-")
    os.environ["CHATD_OWNED_METRICS_DIR"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]

wsgi_app = "chatd.wsgi:app"

#
# Server socket
#
#   bind - Explicit, from [chatd] bind. gunicorn's own default turns into
#       0.0.0.0:$PORT whenever PORT is set, which must not happen silently.
#
#   backlog - Connections waiting to be accepted; 64-2048.

bind = [_settings.bind]
backlog = 2048

#
# Worker processes
#
#   workers - Processes; $WEB_CONCURRENCY or [chatd] workers. One or two per
#       core: the threads do the waiting.
#
#   worker_class - gthread: a sync worker streaming longer than `timeout`
#       would be killed because it cannot heartbeat (gunicorn #1440). chatd's
#       subclass (chatd/worker.py) answers 503 + Retry-After at the door when
#       no thread is free or the CPU, fds or memory ran out (chatd/admission.py),
#       instead of queueing calls no thread will reach for minutes; and it
#       gives each thread a 512 KiB stack instead of 8 MiB.
#
#   threads - Calls in flight per worker: [chatd] threads (default 1536). Each
#       upstream call or open stream holds one thread for its whole length.
#       Size it to the whole concurrency you expect, not that divided by
#       workers: each worker accepts for itself, and at 50 ms upstream latency
#       one worker took all 96 of 96 connections (README, "Performance").
#       Idle threads cost nothing; gthread starts them as calls need them,
#       each with a 512 KiB stack (chatd/worker.py). It is a ceiling, not the
#       capacity: past what the CPU can relay, chatd sheds (chatd/admission.py).
#       The upstream pools are sized to match.
#
#   worker_connections - Connections one worker holds open: its threads' calls,
#       idle keep-alive connections, and those waiting for a set-up slot or
#       being shed. gunicorn's default (1000) would be below `threads`: a
#       worker would stop accepting at 1000 streams and the rest would wait
#       unanswered in the listen backlog instead of being served or shed.
#
#   timeout - For gthread this is only a heartbeat, but keep it above the
#       upstream timeout so a worker is never reaped mid-call.
#
#   graceful_timeout - On SIGTERM or SIGHUP, calls and streams in flight get
#       this long to finish: [chatd] graceful_timeout_secs.
#
#   keepalive - Seconds to hold an idle client connection (nginx in front
#       keeps its upstream connections open); 1-30.
#
#   max_requests, max_requests_jitter - Restart a worker after this many
#       requests, staggered, so a slow leak can never grow without bound.
#       At 10,000 make bench saw 38 restarts (a fork and an app import each)
#       in 12 minutes at ~1,200 req/s; 100,000 is still hours at real LLM rates.

workers = int(os.environ.get("WEB_CONCURRENCY", _settings.workers))
worker_class = "chatd.worker.ChatdWorker"
threads = _settings.threads
worker_connections = 2 * threads
timeout = int(_settings.timeout_secs) + 30
graceful_timeout = int(_settings.graceful_timeout_secs)
keepalive = 5
max_requests = 100000
max_requests_jitter = 10000
# Heartbeat files on tmpfs, not disk (gunicorn docs, "Blocking OS calls").
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

#
# Logging
#
#   chatd writes its own access line per request (with provider and model),
#   so gunicorn's access log stays off; errors go to stderr.

accesslog = None
errorlog = "-"
loglevel = _settings.log_level

#
# Process naming
#

proc_name = "chatd"

#
# Server hooks
#
#   on_starting - Before any socket is bound: refuse to serve beyond loopback
#       without [auth] tokens, whatever --bind said on the command line.
#
#   child_exit - A worker's metric files stop counting as live when it exits.
#
#   on_exit - Remove the metrics directory this file made.


def on_starting(server):
    try:
        check_exposure(server.cfg.bind, _settings.auth, "--bind")
    except ConfigError as e:
        raise SystemExit(f"chatd: {e}") from None
    if not (_settings.auth.token_env or _settings.auth.token_file):
        reach = "anyone who can reach it" if _settings.auth.allow_unauthenticated else "loopback"
        server.log.warning("chatd: no [auth] tokens; serving %s without authentication", reach)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    owned = os.environ.get("CHATD_OWNED_METRICS_DIR")
    if owned and owned == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(owned, ignore_errors=True)
