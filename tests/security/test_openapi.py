"""The OpenAPI 3.1 document: valid, equal to the routes, and honoured by the live web tier (schemathesis)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from openapi_spec_validator import validate

from shared.settings import Settings
from tests.e2e.conftest import write_namespaces
from tests.stack import RedisServer, Stack, stack_for
from web.app import create_app
from web.openapi import build_openapi

ADMIN = "openapi-admin-token-3f14a7e4752fe67abe60"
NAMESPACES = """
[namespaces.demo]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60

[namespaces.demo-swr]
strategy = "swr"
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60

[namespaces.api]
proxy = "${ORIGIN_BASE_URL}/api"
mount = "/p"
"""
IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("openapi")
    env = {
        "ORIGIN_LATENCY_MS": "0",
        "ADMIN_TOKEN": ADMIN,
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": "8",
        # A batch read of more cold keys than the worker runs at once (2) waits seconds for the
        # rest (the broker is polled once a second or so), and so do the reads fuzzed after it.
        "BATCH_MAX_KEYS": "2",
    }
    with stack_for(tmp, NAMESPACES, env, worker_concurrency=2) as s:
        s.origin_config(latency_ms=0)
        yield s


def _documented_operations(doc: dict) -> set[tuple[str, str]]:
    return {(path, method.upper()) for path, item in doc["paths"].items() for method in item}


def test_the_document_is_valid_openapi_3_1_and_served_live(stack: Stack) -> None:
    served = requests.get(stack.web_url + "/openapi.json", timeout=5)
    assert served.status_code == 200 and served.headers["Content-Type"].startswith("application/json")
    doc = served.json()
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    ns_param = doc["paths"]["/v1/cache/{namespace}/{key}"]["get"]["parameters"][0]
    assert ns_param["schema"]["enum"] == ["demo", "demo-swr"]


def test_every_route_is_documented_and_every_documented_operation_is_routed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    settings = Settings(redis_url=redis_server.url, namespaces_file=Path(write_namespaces(tmp_path, NAMESPACES)))
    app = create_app(settings)
    doc = build_openapi(app.extensions["herdless"].namespaces)
    adapter = app.url_map.bind("localhost")

    routed: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        routed |= {(rule.endpoint, m) for m in (rule.methods or set()) - IGNORED_METHODS}

    documented: set[tuple[str, str]] = set()
    for path, method in _documented_operations(doc):
        concrete = path.replace("{namespace}", "demo").replace("{key}", "some%2Fkey")
        endpoint, _ = adapter.match(concrete, method=method)
        documented.add((endpoint, method))

    assert routed - documented == set(), f"routes missing from /openapi.json: {routed - documented}"
    assert documented - routed == set(), f"documented operations with no route: {documented - routed}"


def test_schemathesis_finds_no_server_error_and_no_schema_violation(stack: Stack, tmp_path: Path) -> None:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert binary, "schemathesis is a dev dependency"
    checks = ",".join(
        [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_headers_conformance",
            "response_schema_conformance",
        ]
    )
    proc = subprocess.run(
        [
            binary,
            "run",
            stack.web_url + "/openapi.json",
            "--checks",
            checks,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "100",
            "--seed",
            "20261126",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--header",
            f"Authorization: Bearer {ADMIN}",
            "--suppress-health-check",
            "all",
            "--no-color",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,  # schemathesis keeps a .schemathesis/ cache in its working directory
    )
    # Long generated keys make the report unreadable: collapse their percent-encoding.
    output = re.sub(r"(%[0-9A-F]{2}){16,}", "%..", proc.stdout + proc.stderr)
    assert proc.returncode == 0, output[-8000:]
    # Every operation was exercised, and generated keys really went through to the origin.
    # (schemathesis leaves out the operation that serves the document itself)
    served = requests.get(stack.web_url + "/openapi.json", timeout=5).json()
    operations = len(_documented_operations(served)) - 1
    assert re.search(rf"Selected:\s+{operations}/{operations}\s+Tested:\s+{operations}\b", output), output[-3000:]
    assert stack.origin_stats()["calls"] >= 10
