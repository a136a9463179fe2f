"""The admin API lets nobody in without the token, and neither the token nor the Redis password
ever shows in a log, /readyz or an error body (password-protected Redis, Redis outage included)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from shared.namespaces import mask_url
from shared.settings import redact_url
from tests.faults.observe import TrafficLoop, read_logs
from tests.stack import ROOT, RedisServer, stack_for, wait_until

ADMIN = "adm1n-T0ken-7f3c9e-62283a52768ab4350e1b4"
REDIS_PASSWORD = "r3dis-Pa55-b81d0a"
NAMESPACES = """
[namespaces.demo]
origin = "${ORIGIN_BASE_URL}/items/{key}"
cache_ttl_seconds = 60
"""


def _assert_secret_free(text: str, where: str) -> None:
    assert ADMIN not in text, f"the admin token leaked into {where}"
    assert REDIS_PASSWORD not in text, f"the Redis password leaked into {where}"


def test_admin_api_and_secrets_stay_secret(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD).start()
    env = {
        "ORIGIN_LATENCY_MS": "20",
        "ADMIN_TOKEN": ADMIN,
        "LOG_LEVEL": "debug",
        # Every read of the outage refused, so that its error bodies can be checked for secrets:
        # with the near-cache, warm keys are answered from memory then (tests/faults/test_redis_outage.py).
        "NEAR_CACHE": "false",
    }
    bodies: list[str] = []
    try:
        with stack_for(tmp_path, NAMESPACES, env, redis=redis) as stack:
            assert stack.redis_url.startswith(f"redis://:{REDIS_PASSWORD}@")
            key = "guarded"
            url = stack.url("demo", key)
            before = stack.get("demo", key).json()
            attempts = {
                "no header": {},
                "empty bearer": {"Authorization": "Bearer "},
                "basic scheme": {"Authorization": "Basic " + ADMIN},
                "token without scheme": {"Authorization": ADMIN},
            }
            for name, headers in attempts.items():
                for r in (
                    requests.post(url + "/refresh", headers=headers, timeout=5),
                    requests.delete(url, headers=headers, timeout=5),
                    requests.get(url + "/meta", headers=headers, timeout=5),
                    requests.get(stack.web_url + "/v1/namespaces", headers=headers, timeout=5),
                ):
                    assert r.status_code == 401, (name, r.status_code, r.text)
                    assert r.json()["error"] == "unauthorized"
                    bodies.append(r.text)
            wrong_tokens = ["nope", ADMIN[:-1], ADMIN + "x", ADMIN.upper(), "x" * len(ADMIN), REDIS_PASSWORD]
            for token in wrong_tokens:
                headers = {"Authorization": f"Bearer {token}"}
                for r in (
                    requests.post(url + "/refresh", headers=headers, timeout=5),
                    requests.delete(url, headers=headers, timeout=5),
                    requests.get(url + "/meta", headers=headers, timeout=5),
                    requests.get(stack.web_url + "/v1/namespaces", headers=headers, timeout=5),
                ):
                    assert r.status_code == 403, (token, r.status_code, r.text)
                    assert r.json()["error"] == "forbidden"
                    bodies.append(r.text)
            # The token is checked before the namespace: without it, an unknown namespace
            # answers as a known one does, so namespaces cannot be enumerated.
            for headers, status in (({}, 401), ({"Authorization": "Bearer " + "x" * len(ADMIN)}, 403)):
                for namespace in ("demo", "nope", "n0-such-namespace"):
                    base = f"{stack.web_url}/v1/cache/{namespace}"
                    for r in (
                        requests.post(f"{base}/k/refresh", headers=headers, timeout=5),
                        requests.post(f"{base}/warm", headers=headers, json={"keys": ["k"]}, timeout=5),
                        requests.delete(f"{base}/k", headers=headers, timeout=5),
                        requests.delete(f"{base}/k?soft=1", headers=headers, timeout=5),
                        requests.get(f"{base}/k/meta", headers=headers, timeout=5),
                    ):
                        assert r.status_code == status, (namespace, r.request.method, r.url, r.text)
                        assert "namespace" not in r.json()["detail"], r.text
            # Nothing changed: no refresh ran, nothing was purged.
            after = stack.get("demo", key)
            assert after.headers["X-Cache"] == "HIT" and after.json() == before
            assert stack.origin_stats()["per_key"][key] == 1

            good = {"Authorization": f"Bearer {ADMIN}"}
            assert requests.post(url + "/refresh", headers=good, timeout=5).status_code == 202
            wait_until(lambda: stack.get("demo", key).json()["count"] == 2, 10, "the authorised refresh")

            # Error bodies of every kind, and /readyz healthy and broken.
            for path in ["/v1/cache/demo/a%00b", "/v1/cache/nope/k", "/v1/cache/demo/", "/nowhere"]:
                bodies.append(requests.get(stack.web_url + path, timeout=5).text)
            ready = requests.get(stack.web_url + "/readyz", timeout=5)
            assert ready.status_code == 200
            bodies.append(ready.text)
            for path in ["/status.json", "/metrics"]:
                bodies.append(requests.get(stack.web_url + path, timeout=5).text)

            with TrafficLoop([stack.url("demo", "k1"), stack.url("demo", "cold-during-outage")]) as traffic:
                wait_until(lambda: len(traffic.samples) > 3, 10, "traffic")
                redis.stop()
                down = wait_until(
                    lambda: (r := requests.get(stack.web_url + "/readyz", timeout=5)).status_code == 503 and r.text,
                    10,
                    "/readyz to report the outage",
                )
                bodies.append(down)
                wait_until(lambda: any(s.status == 503 for s in traffic.samples), 10, "503s during the outage")
                redis.start()
                wait_until(
                    lambda: requests.get(stack.web_url + "/readyz", timeout=5).status_code == 200,
                    15,
                    "readiness after Redis returned",
                )
            bodies += [s.body.decode("utf-8", "replace") for s in traffic.samples if s.status >= 400]
            assert any("redis_unavailable" in b for b in bodies)
            for body in bodies:
                _assert_secret_free(body, "a response body")

            # The admin API with no ADMIN_TOKEN configured is off for everyone.
            stack.procs["web"].stop()
            stack.start_web_tier(extra_env={"ADMIN_TOKEN": ""})
            warm = stack.get("demo", key).json()  # (Redis restarted empty above)
            for headers in ({}, good, {"Authorization": "Bearer "}):
                r = requests.delete(url, headers=headers, timeout=5)
                assert r.status_code == 403 and r.json()["error"] == "admin_disabled", r.text
                r = requests.post(url + "/refresh", headers=headers, timeout=5)
                assert r.status_code == 403 and r.json()["error"] == "admin_disabled", r.text
            after = stack.get("demo", key)
            assert after.headers["X-Cache"] == "HIT" and after.json() == warm

            logs = read_logs(stack)
            assert "ready." in logs and "Redis unreachable" in logs  # the logs are real and saw the outage
            _assert_secret_free(logs, "a process log")
    finally:
        redis.stop()


def test_a_settings_error_names_the_variable_but_not_the_secrets() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": f"http://:{REDIS_PASSWORD}@127.0.0.1:1/0",
        "ADMIN_TOKEN": ADMIN,
        "CELERY_BROKER_URL": f"ftp://guest:{REDIS_PASSWORD}@127.0.0.1/",
    }
    proc = subprocess.run(
        [sys.executable, "-c", "from shared.settings import load_settings; load_settings()"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "REDIS_URL" in proc.stderr and "CELERY_BROKER_URL" in proc.stderr, proc.stderr
    _assert_secret_free(proc.stdout + proc.stderr, "the settings error")


# Every form a secret takes in a URL (raw characters included, as a hand-written .env has them),
# and the host each must still show.
SECRET_URLS = [
    ("redis://:s3cr3t-pass@cache.internal:6379/0", "cache.internal:6379"),
    ("redis://:p@ss@w0rd@cache.internal:6379/0", "cache.internal:6379"),  # raw @ in the password
    ("redis://default:p@ss@w0rd@cache.internal/0", "cache.internal"),
    ("rediss://:tail@after@cache.internal:6380/1", "cache.internal:6380"),
    ("unix:///run/redis/redis.sock?db=0&password=s3cr3t-pass", "/run/redis/redis.sock"),
    ("unix:///run/redis/redis.sock?password=q@zz@w0rd&db=2", "/run/redis/redis.sock"),
    ("redis://cache.internal:6379/0?PASSWORD=s3cr3t-pass", "cache.internal:6379"),
    ("redis://cache.internal:6379/0?password=qp-Secret@tail", "cache.internal:6379/0"),
    ("redis://:pa/ss@w0rd@cache.internal/0", "cache.internal"),  # a raw / ends urllib's authority
    ("redis://:pa?ss@cache.internal/0", "cache.internal"),
    ("http://user:p@ss@w0rd@api.internal/items/{key}", "api.internal/items/{key}"),
    ("https://api.internal/items/{key}?token=s3cr3t-pass", "api.internal/items/{key}"),
]


def _secret_parts(url: str) -> list[str]:
    """The password's pieces as a careless redaction could leave them (the tail after a raw @)."""
    for marker in ("password=", "PASSWORD=", "token="):
        if marker in url:
            value = url.split(marker, 1)[1].split("&", 1)[0]
            return [value, *value.split("@")[1:]]
    userinfo = url.split("://", 1)[1].rsplit("@", 1)[0]
    password = userinfo.partition(":")[2]
    return [password, *[p for p in password.split("@")[1:] if p]]


@pytest.mark.parametrize(("url", "host"), SECRET_URLS)
def test_redact_url_and_mask_url_hide_every_form_of_a_password(url: str, host: str) -> None:
    for shown in (redact_url(url), mask_url(url)):
        for part in _secret_parts(url):
            assert part not in shown, (url, shown, part)
        assert host in shown, (url, shown)
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("redis://:x@h/0") == "redis://:***@h/0"
