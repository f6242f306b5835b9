"""chatd.wsgi ~~~ gunicorn's target: the only module-level app.

Under gunicorn the settings and tokens are those the master accepted
(:mod:`chatd.serving`), so a worker never fails to boot on a config that
changed since; elsewhere they come from ``$CHATD_CONFIG`` (default
``config/chatd.toml``). gunicorn imports this in each worker after fork, so
every worker builds its own sessions.
"""

from chatd import serving
from chatd.app import create_app

if serving.current is not None:
    app = create_app(serving.current.settings, tokens=serving.current.tokens)
else:
    app = create_app()
