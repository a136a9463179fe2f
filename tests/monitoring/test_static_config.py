"""Prometheus, alerting, Grafana and compose files are valid and refer only to metrics that exist."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.settings import Settings

from .prometheus_server import required_tool
from .queries import (
    ALERTS,
    ALERTS_TEST,
    DASHBOARD_PROVIDERS,
    KNOWN_SERIES,
    PROMETHEUS_CONFIG,
    REPO,
    alert_rules,
    dashboard_panels,
    load_dashboard,
    metric_names,
    panel_queries,
    pinned_datasource_uid,
    to_promql,
)

REQUIRED_PANELS = [
    "Requests by outcome",
    "Hit ratio",
    "Served staleness",
    "Origin calls vs requests",
    "Requests per origin call (dedup ratio)",
    "Refreshes by outcome",
    "Suppressed refreshes by reason",
    "Refresh lag p50/p99",
    "Queue depth",
    "Breaker state per origin",
    "Workers online",
    "Task runtime",
    "Fresh share",
    "Served age p99",
    "Near-cache hit share",
    "Near-cache bytes",
    "Near-cache invalidations and bypasses",
    "Origin slot wait p50/p99",
    "Origin slot waits and timeouts",
    "Origin calls in flight",
    "Origin bytes received",
    "Revalidated share of origin answers",
    "Group purges: keys visited by outcome, members pending",
    "Keys per batch origin call",
]

REQUIRED_ALERTS = {
    "HerdlessBreakerOpen",
    "HerdlessNearCacheBypassing",
    "HerdlessOriginSlotsSaturated",
    "HerdlessQueueDepthGrowing",
    "HerdlessRefreshFailures",
    "HerdlessStaleAnswersDominating",
    "HerdlessStampede",
    "HerdlessWorkerDown",
}


def run(*command: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_prometheus_config_is_valid_and_loads_the_alert_rules() -> None:
    result = run(required_tool("promtool", "prometheus"), "check", "config", str(PROMETHEUS_CONFIG))
    assert "1 rule files found" in result.stdout


def test_prometheus_scrapes_web_worker_and_flower() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        name: [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        + [f"{n}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
        for name, job in jobs.items()
    }
    assert targets == {"web": ["web:8000"], "worker": ["worker:9540"], "flower": ["flower:5555"]}
    # Every replica of `--scale worker=N`: the worker's name is looked up, not pinned to one.
    assert jobs["worker"]["dns_sd_configs"][0]["type"] == "A"
    flower = next(job for job in config["scrape_configs"] if job["job_name"] == "flower")
    assert flower["basic_auth"]["password_file"], "Flower must be scraped with its credentials"


def test_alert_rules_are_valid() -> None:
    run(required_tool("promtool", "prometheus"), "check", "rules", str(ALERTS))


def test_alert_rules_pass_their_unit_tests() -> None:
    run(required_tool("promtool", "prometheus"), "test", "rules", str(ALERTS_TEST))


def test_every_required_alert_exists_and_has_a_unit_test() -> None:
    names = {rule.name for rule in alert_rules()}
    assert REQUIRED_ALERTS <= names
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert names - tested == set(), "alerts without a firing test case"
    assert names - quiet == set(), "alerts without a quiet test case"


# The secrets compose refuses to start without (no default password ships).
COMPOSE_SECRETS = {
    "REDIS_PASSWORD": "test-redis-password",
    "FLOWER_BASIC_AUTH": "herdless:test-flower-password",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana-password",
}


def compose_config(tmp_path: Path, env: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with exactly `env` (a developer's own .env is not read)."""
    env_file = tmp_path / "compose.env"
    env_file.write_text("")
    base = {k: v for k, v in os.environ.items() if k not in COMPOSE_SECRETS and k != "REDIS_MAXMEMORY"}
    return subprocess.run(
        [required_tool("docker-compose", "docker-compose"), "--env-file", str(env_file), "config", *options],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_is_valid(tmp_path: Path) -> None:
    result = compose_config(tmp_path, COMPOSE_SECRETS, "-q")
    assert result.returncode == 0, f"docker-compose config -q failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("missing", sorted(COMPOSE_SECRETS))
def test_compose_refuses_to_start_without_each_password_naming_it(tmp_path: Path, missing: str) -> None:
    given = {k: v for k, v in COMPOSE_SECRETS.items() if k != missing}
    result = compose_config(tmp_path, given)
    assert result.returncode != 0, result.stdout[-500:]
    assert f"set {missing}" in result.stderr, result.stderr
    assert compose_config(tmp_path, {**given, missing: ""}).returncode != 0  # empty counts as unset


def test_compose_sets_a_redis_password_a_memory_bound_and_no_prometheus_lifecycle_api(tmp_path: Path) -> None:
    result = compose_config(tmp_path, COMPOSE_SECRETS)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    redis = services["redis"]["command"]
    option = {redis[i]: redis[i + 1] for i in range(1, len(redis) - 1) if redis[i].startswith("--")}
    assert option["--requirepass"] == COMPOSE_SECRETS["REDIS_PASSWORD"]
    assert option["--maxmemory"] == "256mb"
    # Only keys with a TTL may go: the breaker, the queue and kombu's bindings have none.
    assert option["--maxmemory-policy"].startswith("volatile-")
    for name in ("web", "worker", "flower"):
        env = services[name]["environment"]
        assert env["REDIS_URL"] == env["CELERY_BROKER_URL"] == "redis://:test-redis-password@redis:6379/0", name
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == COMPOSE_SECRETS["FLOWER_BASIC_AUTH"]
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == COMPOSE_SECRETS["GRAFANA_ADMIN_PASSWORD"]
    prometheus = " ".join(services["prometheus"]["command"])
    assert "--web.enable-lifecycle" not in prometheus
    bounded = compose_config(tmp_path, {**COMPOSE_SECRETS, "REDIS_MAXMEMORY": "1gb"})
    assert "1gb" in yaml.safe_load(bounded.stdout)["services"]["redis"]["command"]


def test_compose_stack_has_every_service_with_a_healthcheck() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"redis", "origin", "web", "worker", "flower", "prometheus", "grafana"}
    for name, service in services.items():
        assert "healthcheck" in service, f"service {name} has no healthcheck"
    for name in ("web", "worker"):
        conditions = {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        assert conditions == {"redis": "service_healthy", "origin": "service_healthy"}, name


def test_the_worker_service_can_be_scaled(tmp_path: Path) -> None:
    """`docker compose up --scale worker=N`: N replicas cannot share one fixed host port, a
    container name or a Celery hostname; each takes a host port of a range instead."""
    result = compose_config(tmp_path, COMPOSE_SECRETS)
    assert result.returncode == 0, result.stderr
    resolved = result.stdout
    worker = yaml.safe_load(resolved)["services"]["worker"]
    assert "container_name" not in worker
    assert any("%h" in arg for arg in worker["command"]), "replicas need distinct Celery hostnames"
    for port in worker.get("ports", []):
        host = str(port["published"]) if isinstance(port, dict) else str(port).rsplit(":", 1)[0]
        low, _, high = host.rpartition(":")[2].partition("-")
        assert high and int(high) > int(low), f"worker publishes one fixed host port: {port}"


def test_dashboard_is_provisioned_from_the_repository() -> None:
    providers = [
        provider
        for path in sorted(DASHBOARD_PROVIDERS.glob("*.y*ml"))
        for provider in yaml.safe_load(path.read_text())["providers"]
    ]
    assert [p["type"] for p in providers] == ["file"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./monitoring/grafana/dashboards:{providers[0]['options']['path']}:ro" in mounts


def test_dashboard_is_a_grafana_10_dashboard_with_a_pinned_uid() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "herdless"
    assert dashboard["title"] == "herdless"
    assert dashboard["schemaVersion"] >= 37, "Grafana 10 writes schemaVersion 37 and later"
    ids = [panel["id"] for panel in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_has_every_required_panel() -> None:
    titles = [panel["title"] for panel in dashboard_panels()]
    missing = [title for title in REQUIRED_PANELS if title not in titles]
    assert not missing, f"missing panels: {missing}"


def test_every_panel_queries_the_pinned_datasource() -> None:
    uid = pinned_datasource_uid()
    for panel in dashboard_panels():
        assert panel.get("targets"), f"panel {panel['title']!r} has no queries"
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, (
                panel["title"],
                target["refId"],
            )
    for variable in load_dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == uid, variable["name"]


@pytest.mark.parametrize("query", panel_queries(), ids=lambda q: f"{q.panel}/{q.ref_id}")
def test_panel_queries_use_only_known_metrics(query) -> None:  # noqa: ANN001 - parametrized dataclass
    names = metric_names(to_promql(query.expr))
    assert names, f"no metric found in {query.expr!r}"
    assert names <= KNOWN_SERIES, f"unknown metrics {sorted(names - KNOWN_SERIES)} in {query.expr!r}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r.name)
def test_alert_expressions_use_only_known_metrics(rule) -> None:  # noqa: ANN001
    names = metric_names(rule.expr)
    assert names, f"no metric found in {rule.expr!r}"
    assert names <= KNOWN_SERIES, f"unknown metrics {sorted(names - KNOWN_SERIES)} in {rule.expr!r}"


def test_metric_name_extraction_ignores_functions_labels_and_keywords() -> None:
    expr = (
        'sum by (outcome) (rate(a_total{outcome=~"hit|miss", x="y"}[5m] offset 1m)) '
        "/ on (namespace) group_left (reason) b_bucket * 0.5 > bool 1 and up"
    )
    assert metric_names(expr) == {"a_total", "b_bucket", "up"}


# Variables of the contract that are not fields of shared.settings.Settings.
NON_SETTINGS_VARIABLES = {"FLOWER_PORT", "FLOWER_BASIC_AUTH", "PROMETHEUS_MULTIPROC_DIR"}


def env_example() -> dict[str, str | None]:
    """`VAR=value` lines of .env.example; `# VAR=value` lines (unset by default) map to None."""
    variables: dict[str, str | None] = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            variables[match[1]] = match[2]
        elif match := re.fullmatch(r"# ([A-Z][A-Z0-9_]*)=.*", line):
            variables.setdefault(match[1], None)
    return variables


def test_env_example_lists_every_setting() -> None:
    expected = {name.upper() for name in Settings.model_fields} | NON_SETTINGS_VARIABLES
    missing = expected - set(env_example())
    assert not missing, f".env.example does not mention {sorted(missing)}"


def test_env_example_values_are_the_built_in_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = {name.upper(): name for name in Settings.model_fields}
    for variable in fields:
        monkeypatch.delenv(variable, raising=False)
    defaults = Settings()
    for variable, value in env_example().items():
        if variable in fields and value is not None:
            written = Settings(**{fields[variable]: value})
            field = fields[variable]
            assert getattr(written, field) == getattr(defaults, field), f"{variable}={value} is not the default"


# Settings compose does not pass from .env: fixed inside the containers (its own Redis, so no
# sentinels), or a test's knob.
NOT_PASSED_BY_COMPOSE = {
    "WEB_BIND",
    "NAMESPACES_FILE",
    "QUEUED_MARKER_SECONDS",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER",
}


def test_compose_passes_every_setting_from_env() -> None:
    """A setting compose leaves out cannot be set in .env for the containers at all."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    passed = set(compose["x-herdless-env"])
    missing = {name.upper() for name in Settings.model_fields} - passed - NOT_PASSED_BY_COMPOSE
    assert missing == set(), f"docker-compose.yml does not pass {sorted(missing)}"


def test_compose_gives_the_admin_token_only_to_web_and_worker(tmp_path: Path) -> None:
    result = compose_config(tmp_path, {**COMPOSE_SECRETS, "ADMIN_TOKEN": "t" * 40})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    holders = {name for name, svc in services.items() if (svc.get("environment") or {}).get("ADMIN_TOKEN")}
    assert holders == {"web", "worker"}, holders


def test_compose_defaults_match_env_example() -> None:
    documented = env_example()
    compose = re.sub(r"(?m)^\s*#.*$", "", (REPO / "docker-compose.yml").read_text())
    for variable, default in re.findall(r"\$\{([A-Z][A-Z0-9_]*):-([^}]*)\}", compose):
        assert variable in documented, f"docker-compose.yml uses {variable}, which .env.example does not list"
        if documented[variable] is not None:
            documented_default = documented[variable]
            assert default == documented_default, f"{variable}: {default!r} vs {documented_default!r}"
