"""The OpenAPI document stays true: every route is in it, and the live service matches it.

schemathesis generates requests from the document (a bounded number per
operation) and checks each answer against it, and that no answer is a 5xx
that chatd made up (502/503/504 from upstream trouble are documented).
"""

from __future__ import annotations

import json
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chatd.health import openapi_document
from tests.conftest import TEST_KEYS
from tests.live import clean_env, fake_providers, provider_urls, run_chatd, write_config

MAX_EXAMPLES = 25


def test_document_names_every_route_and_only_those(app):
    document = json.loads(openapi_document())
    assert document["openapi"].startswith("3.1")
    routed = {
        # Flask's <converter:name> is OpenAPI's {name}.
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert routed == documented


def test_document_is_served(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == json.loads(openapi_document())


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with fake_providers() as fakes:
        config = write_config(
            tmp_path_factory.mktemp("openapi") / "chatd.toml",
            timeout_secs=3.0,
            threads=8,
            **provider_urls(fakes),
        )
        with run_chatd(config, clean_env(**TEST_KEYS), workers=1) as chatd:
            yield chatd


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def test_live_service_matches_the_document(live):
    # schemathesis' own pytest plugin does not run under pytest 9, so each
    # operation gets a bounded hypothesis run of its own here.
    api = schemathesis.openapi.from_url(live.url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    documented = {
        f"{method.upper()} {path}"
        for path, ops in json.loads(openapi_document())["paths"].items()
        for method in ops
    }
    # Loaded from a URL, schemathesis leaves out the document's own path.
    assert {operation.label for operation in operations} == documented - {"GET /openapi.json"}

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            case.call_and_validate(base_url=live.url, timeout=10, checks=CHECKS)

        check()
