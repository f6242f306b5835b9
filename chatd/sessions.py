"""chatd.sessions ~~~ One pooled, frozen ``requests.Session`` per provider.

Built once per worker at start-up and shared by its threads, so nothing here
may change after :func:`make_session` returns (psf/requests#2766).
"""

from __future__ import annotations

from http.cookiejar import DefaultCookiePolicy

import requests
from requests.adapters import HTTPAdapter
from requests.models import Response
from requests.structures import CaseInsensitiveDict

import chatd


def user_agent() -> str:
    # Honest and stable: Kimi filters clients by User-Agent and treats
    # impersonating another tool as a violation.
    return f"chatd/{chatd.__version__}"


class UpstreamAdapter(HTTPAdapter):
    """requests' HTTPAdapter, minus the per-call work a provider session never needs.

    Each chatd session talks to one origin, with no proxy and no cookies, so
    the pool lookup and the path can be worked out once per URL, and responses
    are built without cookie extraction or charset sniffing. ``send`` itself is
    requests' own (and what the ``responses`` library mocks in tests).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._pools: dict[str, object] = {}
        self._paths: dict[str, str] = {}

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        if proxies:
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        origin = request.url.split("/", 3)[:3]
        key = "/".join(origin)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = super().get_connection_with_tls_context(
                request, verify, proxies, cert
            )
        return pool

    def request_url(self, request, proxies):
        if proxies:
            return super().request_url(request, proxies)
        path = self._paths.get(request.url)
        if path is None:
            path = self._paths[request.url] = request.path_url
        return path

    def build_response(self, req, resp) -> Response:
        response = Response()
        response.status_code = resp.status
        response.headers = CaseInsensitiveDict(resp.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url
        response.request = req
        response.connection = self
        return response

    def close(self) -> None:
        self._pools.clear()
        super().close()


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
    adapter = UpstreamAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
