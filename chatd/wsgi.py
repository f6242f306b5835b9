"""chatd.wsgi ~~~ gunicorn's target: the only module-level app.

Settings come from ``$CHATD_CONFIG`` (default ``config/chatd.toml``). gunicorn
imports this in each worker after fork, so every worker builds its own sessions.
"""

from chatd.app import create_app

app = create_app()
