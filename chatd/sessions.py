"""chatd.sessions ~~~ One pooled, frozen ``requests.Session`` per provider.

Built once per worker at start-up and shared by its threads, so nothing here
may change after :func:`make_session` returns (psf/requests#2766).
"""

from __future__ import annotations

from http.cookiejar import DefaultCookiePolicy

import requests
from requests.adapters import HTTPAdapter

import chatd


def user_agent() -> str:
    # Honest and stable: Kimi filters clients by User-Agent and treats
    # impersonating another tool as a violation.
    return f"chatd/{chatd.__version__}"


def make_session(headers: dict[str, str], pool_size: int) -> requests.Session:
    """Return a session with ``headers`` set once and a pool of ``pool_size`` connections."""
    session = requests.Session()
    # Proxies, .netrc and CA bundles from the environment would be looked up
    # on every call; chatd takes none of them implicitly.
    session.trust_env = False
    # Upstream cookies must not leak from one caller to the next.
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    session.headers.clear()
    session.headers.update(
        {
            "User-Agent": user_agent(),
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            "Content-Type": "application/json",
            **headers,
        }
    )
    # One pool per provider host, as large as the threads that may share it;
    # retries are chatd's decision, never urllib3's.
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
