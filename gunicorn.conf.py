"""gunicorn settings for chatd.

chatd is I/O-bound: each call waits seconds to minutes on an upstream model,
so it runs few processes with many threads (gthread), one thread per call in
flight. Values come from chatd's own config ($CHATD_CONFIG, default
config/chatd.toml) so there is one place to set them; gunicorn's command-line
flags still win (the tests pass --bind 127.0.0.1:<free port>).

Run with `chatd --config PATH`, or `CHATD_CONFIG=PATH gunicorn -c gunicorn.conf.py`.
"""

import os

from chatd.config import ConfigError, load_settings

try:
    _settings = load_settings()
except ConfigError as e:
    # One clear line rather than gunicorn's "Failed to read config file" traceback.
    raise SystemExit(f"chatd: {e}") from None

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
#       would be killed because it cannot heartbeat (gunicorn #1440).
#
#   threads - Calls in flight per worker: [chatd] threads. Each upstream call
#       or open stream holds one thread for its whole length, so size this to
#       the concurrency you expect divided by workers. The upstream pools are
#       sized to match.
#
#   timeout - For gthread this is only a heartbeat, but keep it above the
#       upstream timeout so a worker is never reaped mid-call.
#
#   graceful_timeout - On SIGTERM/SIGHUP in-flight calls get this long to finish.
#
#   keepalive - Seconds to hold an idle client connection (nginx in front
#       keeps its upstream connections open); 1-30.
#
#   max_requests, max_requests_jitter - Restart a worker after this many
#       requests, staggered, so a slow leak can never grow without bound.

workers = int(os.environ.get("WEB_CONCURRENCY", _settings.workers))
worker_class = "gthread"
threads = _settings.threads
timeout = int(_settings.timeout_secs) + 30
graceful_timeout = 30
keepalive = 5
max_requests = 10000
max_requests_jitter = 1000
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
