"""chatd: a small, fast LLM chat dispatcher.

One URL and one request shape in front of a local Ollama and a few cloud
providers; the model name picks the provider. Importing this package has no
side effects: the app is built by :func:`chatd.app.create_app`.
"""

__version__ = "0.1.0"


def create_app(settings=None):
    """Build the Flask app; see :func:`chatd.app.create_app`."""
    from chatd.app import create_app as _create_app

    return _create_app(settings)
