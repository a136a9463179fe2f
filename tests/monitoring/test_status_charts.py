"""The status page's live charts, in a real headless Chromium: while traffic flows, no chart is empty,
and every outcome name the page shows has an entry in its legend."""

from __future__ import annotations

import re
import threading
import time

import requests

from tests.monitoring.test_metrics import _chromium
from tests.stack import ROOT, Stack, wait_until

STACK_NAMESPACES = (ROOT / "namespaces.toml").read_text()
# Refreshes every few seconds; the origin chart compares calls over the last TTL's whole seconds.
STACK_ENV = {"CACHE_TTL_SECONDS": "3", "ORIGIN_LATENCY_MS": "20"}
CHARTS = ("answers", "fresh", "origin", "queue", "lag")


def render_while_traffic_flows(stack: Stack, budget_ms: int = 8000) -> str:
    import subprocess
    import tempfile

    stop = threading.Event()

    def traffic(namespace: str) -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            i += 1
            session.get(stack.url(namespace, f"chart-{i % 20}"), timeout=10)

    workers = [threading.Thread(target=traffic, args=(ns,), daemon=True) for ns in ("demo", "demo-naive")]
    for worker in workers:
        worker.start()
    # Traffic for a TTL first, so the last TTL's seconds hold origin calls when the page opens.
    wait_until(lambda: requests.get(stack.web_url + "/status.json", timeout=5).json()["requests_total"] > 50, 30,
               "traffic to flow")  # fmt: skip
    time.sleep(3)  # a TTL of traffic: the window the origin chart measures, not a synchronisation
    try:
        with tempfile.TemporaryDirectory() as profile:
            out = subprocess.run(
                [
                    _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                    f"--virtual-time-budget={budget_ms}", "--dump-dom", stack.web_url + "/",
                ],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
    finally:
        stop.set()
        for worker in workers:
            worker.join(15)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def chart(dom: str, name: str) -> tuple[str, dict[str, str]]:
    m = re.search(rf'<svg id="chart-{name}"([^>]*)>(.*?)</svg>', dom, re.S)
    assert m, f"chart {name} not on the page"
    return m.group(2), dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1)))


def test_no_chart_is_empty_while_traffic_flows_and_every_outcome_shown_has_a_legend(stack: Stack) -> None:
    dom = render_while_traffic_flows(stack)
    for name in CHARTS:
        body, attrs = chart(dom, name)
        assert int(attrs["data-points"]) >= 2 and "<polyline" in body, (name, attrs, body[:300])
    for name in ("answers", "origin"):  # reads were answered and the origin was called
        assert float(chart(dom, name)[1]["data-max"]) > 0, name
    _, origin = chart(dom, "origin")
    assert 'data-series="ideal"' in chart(dom, "origin")[0], "the ideal cache's line is missing"
    assert "ideal: keys read in the last TTL" in dom
    shown = set(re.findall(r'data-outcome="([a-z_]+)"', dom))
    assert shown and shown <= {"hit", "early", "stale", "miss", "negative", "not_modified", "timeout", "error"}
    names = shown | set(re.findall(r'data-key="([a-z_]+)"', dom))  # the counters' outcome names
    terms = set(re.findall(r'data-term="([a-z_-]+)"', dom))
    missing = sorted(names - terms)
    assert not missing, f"outcome names with no legend entry: {missing}"
    # Every counter says its period.
    assert dom.count('class="period"') >= 12
