"""Shared fixtures: a private redis-server for engine tests and a settings builder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.namespaces import Namespace, build_namespace
from shared.settings import Settings
from shared.store import CacheStore, make_redis
from tests.stack import RedisServer, Stack, stack_for


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack of real processes for a whole test module, which configures it with
    STACK_NAMESPACES (the namespaces.toml body), and optionally STACK_ENV (settings) and
    STACK_OPTIONS (Stack's keyword arguments: workers, worker_concurrency, ...)."""
    module = request.module
    namespaces = getattr(module, "STACK_NAMESPACES", None)
    if namespaces is None:
        raise pytest.UsageError(f"{module.__name__} uses the stack fixture but sets no STACK_NAMESPACES")
    tmp = tmp_path_factory.mktemp(module.__name__.rpartition(".")[2])
    env = getattr(module, "STACK_ENV", {})
    with stack_for(tmp, namespaces, env, **getattr(module, "STACK_OPTIONS", {})) as running:
        yield running


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    redis_server.client().flushall()
    return Settings(redis_url=redis_server.url, lease_ttl_seconds=2, cache_ttl_seconds=5, stale_ttl_seconds=10)


@pytest.fixture
def store(settings: Settings) -> CacheStore:
    return CacheStore(make_redis(settings), settings)


@pytest.fixture
def ns(settings: Settings) -> Namespace:
    return build_namespace("t", {"origin": "http://127.0.0.1:9/items/{key}", "strategy": "xfetch"}, settings)


def namespaces_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "namespaces.toml"
    path.write_text(body)
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
    """No test may skip itself in `make test`: a skip is a promise nobody checked."""
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} test(s) skipped: make test allows none", red=True)
        for report in skipped:
            terminalreporter.write_line(f"  skipped: {report.nodeid}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped") and session.exitstatus == 0:
        session.exitstatus = 1
