"""Fixtures for monitoring tests: a real Prometheus started per test module."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from .prometheus_server import PrometheusServer
from .queries import ALERTS


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., PrometheusServer]]:
    """Start Prometheus scraping `{job: metrics_url}`, loading monitoring/alerts.yml unless told otherwise.

    Module-scoped so that one Prometheus can watch a stack shared by a module's tests;
    every server started is stopped when the module is done.
    """
    started: list[PrometheusServer] = []

    def start(targets: dict[str, str], rule_files: Iterable[Path] = (ALERTS,)) -> PrometheusServer:
        server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), targets, rule_files)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
