"""gunicorn settings for chatd.

chatd is I/O-bound: each call waits seconds to minutes on an upstream model,
so it runs few processes with many threads (gthread), one thread per whole
call in flight, and one event loop per worker relaying the open streams.
Values come from chatd's own config ($CHATD_CONFIG, default config/chatd.toml)
so there is one place to set them; gunicorn's command-line flags still win
(the tests pass --bind 127.0.0.1:<free port>).

Run with `chatd --config PATH`, or `CHATD_CONFIG=PATH gunicorn -c gunicorn.conf.py`.
"""

import os
import resource
import shutil
import sys
import tempfile

from chatd import serving
from chatd.board import share_board
from chatd.config import ConfigError, check_exposure, is_loopback

# In the master, at start and on every SIGHUP. A config that fails any check
# (settings, tokens, exposure for the binds in use) stops a start, but on a
# reload it is refused and logged and the last good one keeps serving: the
# new workers are built from serving.current, not from the files.
try:
    _serving, _refused = serving.accept(os.environ)
except ConfigError as e:
    # One clear line rather than gunicorn's "Failed to read config file" traceback.
    raise SystemExit(f"chatd: {e}") from None
if _refused:
    print(
        f"chatd: reload refused, still serving the config loaded before: {_refused}",
        file=sys.stderr,
        flush=True,
    )
_settings = _serving.settings

wsgi_app = "chatd.wsgi:app"


def _raise_file_limit() -> int:
    """Raise this process's soft limit on open files to the hard one; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


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
#       subclass (chatd/worker.py) keeps a connection in its event loop until
#       its request is whole (slow clients hold no thread), answers 503 +
#       Retry-After at the door when no call slot is free or the CPU, fds or memory
#       ran out (chatd/admission.py), instead of queueing calls no thread will
#       reach for minutes; gives each thread a 512 KiB stack instead of 8 MiB;
#       hands each stream, once set up, to its relay (chatd/relay.py);
#       and answers gunicorn's own 400/414/431 in chatd's JSON error body.
#
#   threads - Calls in flight per worker: [chatd] threads (default 1536). A
#       whole upstream call holds one thread for its whole length; a stream
#       holds one for its set-up, then the worker's relay carries it on
#       (chatd/relay.py) and it counts against `threads` without a thread.
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
#       Each is a file descriptor: the soft limit is raised to the hard one,
#       and worker_connections kept below it (the worker also survives an
#       accept() that runs out of descriptors, but should not need to).
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
_files = _raise_file_limit()
worker_connections = max(64, min(2 * threads, _files - 256))
timeout = int(_settings.timeout_secs) + 30
graceful_timeout = int(_settings.graceful_timeout_secs)
keepalive = 5
max_requests = 100000
max_requests_jitter = 10000
# Heartbeat files on tmpfs, not disk (gunicorn docs, "Blocking OS calls").
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

#
# Slow clients (chatd.worker.WholeRequests)
#
#   A connection stays in the worker's event loop, costing no thread, until
#   its whole request has arrived; only then does a thread take it. A client
#   that has not sent its whole head within head_timeout_secs (from connecting,
#   or from its next request's first byte on a kept-alive connection), or its
#   body within body_timeout_secs of the head, gets a JSON 408 and is closed.
#   A body over max_request_bytes is handed over at once (for chatd's 413);
#   a chunked body after its head. A worker holds at most hold_budget_bytes of
#   bodies this way; past that, a body is read by its thread as gthread does.

from chatd.worker import WholeRequests  # noqa: E402

WholeRequests.head_timeout_secs = 10.0
WholeRequests.body_timeout_secs = 30.0
WholeRequests.max_body_bytes = _settings.max_request_bytes
WholeRequests.hold_budget_bytes = 64 << 20

#
# Proxies
#
#   forwarded_allow_ips - Peers whose forwarding headers gunicorn believes:
#       loopback (where nginx runs) only when [chatd] trusted_proxies says a
#       proxy is in front, else nobody. chatd's own ProxyFix reads
#       X-Forwarded-For/-Proto by count.
#
#   forwarder_headers - None: a client-sent SCRIPT_NAME or PATH_INFO header
#       would remount chatd (a bad one made GET /health a 500). chatd is
#       always mounted at /.

forwarded_allow_ips = "127.0.0.1,::1" if _settings.trusted_proxies else ""
forwarder_headers = ""

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
# Server hooks (all run in the master)
#
#   on_starting - Before any socket is bound: refuse to serve beyond loopback
#       without [auth] tokens, whatever --bind said on the command line. Then
#       make the cooldown board the workers share and the metrics directory.
#
#   pre_fork - Before each worker: recreate the metrics directory if it
#       vanished (a tmp cleaner, a stray rm): a worker cannot boot without it,
#       and a worker that cannot boot makes gunicorn's master exit.
#
#   post_worker_init - The same check again in every worker, against the app
#       it built and the binds gunicorn really has (after a reload too): a
#       worker that would serve beyond loopback without tokens refuses to boot.
#
#   child_exit - A worker's metric files stop counting as live when it exits.
#
#   on_exit - Remove the metrics directory this master made.


def on_starting(server):
    tokens = _serving.tokens
    try:
        check_exposure(server.cfg.bind, _settings.auth, tokens, "--bind")
    except ConfigError as e:
        raise SystemExit(f"chatd: {e}") from None
    serving.binds[:] = list(server.cfg.bind)
    if not tokens:
        reach = "anyone who can reach it" if _settings.auth.allow_unauthenticated else "loopback"
        server.log.warning("chatd: no [auth] tokens; serving %s without authentication", reach)
    share_board()
    # Metrics: every worker writes its values under one directory that /metrics
    # sums (prometheus_client's multiprocess mode). One of our own unless the
    # operator set one; a master started by USR2 inherits the old master's
    # variables, and makes its own (the old one removes its own on exit).
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not given or given == os.environ.get("CHATD_OWNED_METRICS_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="chatd-metrics-")
        os.environ["CHATD_OWNED_METRICS_DIR"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def pre_fork(server, worker):
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and not os.path.isdir(directory):
        server.log.warning("chatd: metrics directory %s vanished; made it again", directory)
        os.makedirs(directory, mode=0o700, exist_ok=True)


def post_worker_init(worker):
    # The app itself, inside chatd.worker's set-up wrapper.
    chatd = getattr(worker.wsgi, "__wrapped__", worker.wsgi).extensions["chatd"]
    if chatd.authenticated or chatd.settings.auth.allow_unauthenticated:
        return
    exposed = [bind for bind in worker.cfg.bind if not is_loopback(bind)]
    if exposed:
        # Raised in a worker's boot, this halts gunicorn: closed, not open.
        raise ConfigError(
            f"bind {exposed[0]} is reachable from other machines and [auth] has no tokens"
        )


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    owned = os.environ.get("CHATD_OWNED_METRICS_DIR")
    if owned and owned == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(owned, ignore_errors=True)
