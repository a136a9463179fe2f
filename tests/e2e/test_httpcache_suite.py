"""The HTTP cache test suite (cache-tests.fyi's, npm http-cache-tests) through a proxy namespace at
its defaults, on a real stack: redis-server, a Celery worker, gunicorn, the suite's own origin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest import cachetests
from tests.stack import ROOT

# The bar: more required and optimal tests passed than every published reverse proxy.
REQUIRED_AT_LEAST = 142
OPTIMAL_AT_LEAST = 75

needs_the_proxy_route = pytest.mark.skipif(
    not (ROOT / "web" / "proxy.py").exists(), reason="proxy namespaces are not wired into the web tier yet"
)


def test_the_suite_grades_its_published_peers_as_their_results_say() -> None:
    tests, peers = cachetests.load_metadata()
    grades = dict(cachetests.peer_grades(tests, peers))
    squid = next(g for name, g in grades.items() if name.startswith("Squid"))
    assert (squid.required, squid.optimal) == (122, 49)  # the peers' own results files, graded
    assert squid.required_total == 165 and squid.optimal_total == 95


@needs_the_proxy_route
def test_a_proxy_namespace_at_its_defaults_passes_more_than_every_peer(tmp_path: Path) -> None:
    tests, peers = cachetests.load_metadata()
    results = json.loads(cachetests.run_suite(workdir=tmp_path))
    ours = cachetests.grade(tests, results)
    best = cachetests.peer_grades(tests, peers)[0][1]
    score = f"{ours.required}/{ours.required_total} required, {ours.optimal}/{ours.optimal_total} optimal passed\n"
    failures = score + "\n".join(f"{k} {test_id} {verdict}: {why}" for k, test_id, verdict, why in ours.failures)
    assert ours.required >= max(REQUIRED_AT_LEAST, best.required + 1), failures
    assert ours.optimal >= OPTIMAL_AT_LEAST, failures
