"""Stacks of real processes shared by the end-to-end tests of one module."""

from __future__ import annotations

from pathlib import Path

ENGINE_NAMESPACES = """
[namespaces.herd]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60

[namespaces.fast]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 1
# A 150 ms refresh is a sixth of this TTL: the default beta (4) would start it ~0.6 s early on
# average and refresh about 1.5 times per window. The paper's beta keeps one call per window.
xfetch_beta = 1

[namespaces.swr]
strategy = "swr"
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 1

[namespaces.lock]
strategy = "lock"
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 1

# A herd that arrives when the value expires must finish inside one TTL to see one refresh.
[namespaces.lock-herd]
strategy = "lock"
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 2

# A cached 404 is refreshed early like any value under XFetch; beta 0 leaves only its expiry.
[namespaces.neg]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
negative_ttl_seconds = 1
xfetch_beta = 0

[namespaces.naive]
strategy = "naive"
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60

# Read only by the status-rates test, so its last-minute counts are that test's alone.
[namespaces.rates]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60

[namespaces.py]
origin = "tests.origins:compute"
cache_ttl_seconds = 60

[namespaces.py-typed]
origin = "tests.origins:typed"
cache_ttl_seconds = 60
"""


# A long-lived namespace and a 1 s stale-while-revalidate one: enough for most fault tests.
LONG_AND_SWR_NAMESPACES = """
[namespaces.k]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60

[namespaces.swr]
strategy = "swr"
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 1
"""


# The shipped namespaces plus "herd", a 60 s xfetch namespace: a herd of requests on a loaded
# machine may outlast XFetch's early window of a short-lived value (and then rightly cost a
# second origin call), so tests that count one call per herd read a long-lived one.
SHIPPED_AND_LONG_HERD_NAMESPACES = (
    (Path(__file__).resolve().parents[2] / "namespaces.toml").read_text()
    + """
[namespaces.herd]
strategy = "xfetch"
cache_ttl_seconds = 60
origin = "${ORIGIN_BASE_URL}/items/{key}"
"""
)


def write_namespaces(tmp: Path, body: str = ENGINE_NAMESPACES) -> str:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "namespaces.toml"
    path.write_text(body)
    return str(path)
