"""The naive strategy calls the origin from the web tier, so its failures reach anonymous clients
directly: they get the fixed text of the failure's code, never the origin exception's own text
(a callable's exception may name a database DSN with its password)."""

from __future__ import annotations

from pathlib import Path

from shared.answers import FAILURE_DETAILS
from shared.protocol import FailureCode
from tests.origins import LEAKY_DSN
from tests.stack import stack_for

NAMESPACES = """
[namespaces.naive]
strategy = "naive"
origin = "tests.origins:leaky"

[namespaces.naive-http]
strategy = "naive"
origin = "${ORIGIN_BASE_URL}/items/{key}"
origin_timeout_seconds = 0.3
"""


def test_a_naive_read_answers_an_origin_failure_with_its_fixed_text_not_the_exception(tmp_path: Path) -> None:
    with stack_for(tmp_path, NAMESPACES, {"ORIGIN_LATENCY_MS": "10"}, workers=0) as stack:
        r = stack.get("naive", "fail-now")
        assert r.status_code == 502, r.text
        assert r.json() == {"error": "origin_error", "detail": FAILURE_DETAILS[FailureCode.ORIGIN_ERROR]}
        assert LEAKY_DSN not in r.text and "Db-Pa55word" not in r.text and "db.internal" not in r.text
        assert stack.get("naive", "fine").status_code == 200

        stack.origin_config(latency_ms=1500)  # past the namespace's origin timeout
        slow = stack.get("naive-http", "slow")
        assert slow.status_code == 502 and slow.json()["error"] == "origin_timeout", slow.text
        assert slow.json()["detail"] == FAILURE_DETAILS[FailureCode.ORIGIN_TIMEOUT]
        # The operator still learns what failed, from the web tier's log.
        assert "ConnectionError" in stack.procs["web"].output()
