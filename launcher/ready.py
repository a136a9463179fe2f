"""`make run`'s ready block: printed once web, worker and Flower all answer, and last.

"Ready" used to mean the web tier's /readyz, so the block came before the worker and Flower were
up and their start-up lines pushed the Flower password off the screen. Now the block waits for
each started process, and says what a newcomer asks next: is the admin API on, which namespaces
file and which Redis is this.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from launcher.processes import ROOT
from shared.keys import Keyspace
from shared.namespaces import load_namespaces
from shared.settings import MIN_ADMIN_TOKEN_CHARS, load_settings, reachable_host, redact_url, url_host

# How long a process may take to answer before the block says which one it still waits for.
PATIENCE_SECONDS = 60.0
RULE = "-" * 78


@dataclass
class RedisInUse:
    """Which Redis the stack uses, for the block: `kind` is "url", "private" or "embedded"."""

    kind: str = "url"
    detail: str = ""


@dataclass
class Readiness:
    """What each started process has shown so far; the worker's "ready." line is seen by the
    supervisor that relays its output (Celery logs it once it consumes)."""

    worker: threading.Event = field(default_factory=threading.Event)

    def saw_line(self, process: str, line: bytes) -> None:
        if process == "worker" and b" ready." in line:
            self.worker.set()


def answers_http(url: str) -> bool:
    """Whether anything HTTP answers at `url` (a 401 from Flower's login counts)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status)
    except urllib.error.HTTPError:
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def ready_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except Exception:  # noqa: BLE001 - not ready yet
        return False


def checks(env: dict[str, str], names: set[str], readiness: Readiness) -> dict[str, Callable[[], bool]]:
    settings = load_settings()
    host = url_host(reachable_host(settings.bind_host))
    found: dict[str, Callable[[], bool]] = {}
    if "web" in names:
        found["web"] = lambda: ready_ok(f"http://{host}:{settings.web_port}/readyz")
    if "worker" in names:
        found["worker"] = readiness.worker.is_set
    if "flower" in names:
        found["flower"] = lambda: answers_http(f"http://{host}:{env.get('FLOWER_PORT') or 5555}/healthcheck")
    if "origin" in names:
        found["origin"] = lambda: answers_http(f"http://{host}:{settings.origin_port}/stats")
    return found


def url_block(env: dict[str, str], names: set[str], flower_generated: bool, redis_in_use: RedisInUse) -> list[str]:
    settings = load_settings()
    host = url_host(reachable_host(settings.bind_host))
    web = f"http://{host}:{settings.web_port}"
    namespaces = load_namespaces(settings)
    namespace = "demo" if "demo" in namespaces else sorted(namespaces)[0]
    rows = [
        ("web", "API", f"{web}/v1/cache/{namespace}/hello"),
        ("web", "status page", f"{web}/"),
        ("web", "web metrics", f"{web}/metrics"),
        ("worker", "worker metrics", f"http://{host}:{settings.worker_metrics_port}/metrics"),
        ("origin", "demo origin", f"http://{host}:{settings.origin_port}/items/hello"),
    ]
    lines = [f"  {label:<15} {url}" for role, label, url in rows if role in names]
    if "flower" in names:
        flower = f"http://{host}:{env.get('FLOWER_PORT') or 5555}"
        if flower_generated:
            user, _, password = env["FLOWER_BASIC_AUTH"].partition(":")
            lines.append(f"  {'Flower':<15} {flower}  user {user}, password {password} (generated for this run)")
        else:
            lines.append(f"  {'Flower':<15} {flower}  login from FLOWER_BASIC_AUTH")
    if settings.admin_token:
        admin = "on (ADMIN_TOKEN set): refresh, purge, warm-up, meta, /v1/namespaces"
    else:
        admin = f"off: set ADMIN_TOKEN ({MIN_ADMIN_TOKEN_CHARS}+ characters) for refresh, purge, warm-up, meta"
    lines.append(f"  {'admin API':<15} {admin}")
    shown = settings.namespaces_file
    if shown.is_absolute() and shown.is_relative_to(ROOT):
        shown = shown.relative_to(ROOT)
    lines.append(f"  {'namespaces':<15} {shown} (NAMESPACES_FILE): {', '.join(sorted(namespaces))}")
    where = {
        "url": "REDIS_URL",
        "private": "private redis-server, deleted on stop",
        "embedded": f"embedded {redis_in_use.detail}, deleted on stop",
    }[redis_in_use.kind]
    lines.append(f"  {'Redis':<15} {redact_url(settings.redis_url)} ({where})")
    lines.append(f"  {'Redis names':<15} {settings.herdless_prefix}:… (HERDLESS_PREFIX)")
    if "worker" in names:
        lines.append(f"  {'refresh queue':<15} {Keyspace.of(settings).queue}")
    if settings.bind_host in ("0.0.0.0", "::"):
        listening = f"{settings.bind_host}: every interface (BIND_HOST)"
    else:
        listening = f"{settings.bind_host} only (BIND_HOST)"
    lines.append(f"  {'listening on':<15} {listening}")
    return [RULE, "herdless is ready. Ctrl-C (or SIGTERM, SIGHUP) stops every process.", *lines, RULE]


def announce_when_ready(
    say: Callable[[str], None],
    stopping: Callable[[], bool],
    waits: dict[str, Callable[[], bool]],
    block: list[str],
) -> None:
    """Print `block` once every check in `waits` has passed; after PATIENCE_SECONDS, say once which
    processes have not answered yet (and keep waiting)."""
    started = time.monotonic()
    pending = dict(waits)
    warned = False
    while not stopping():
        pending = {name: check for name, check in pending.items() if not check()}
        if not pending:
            for line in block:
                say(line)
            return
        if not warned and time.monotonic() - started > PATIENCE_SECONDS:
            warned = True
            say(
                f"herdless: {', '.join(sorted(pending))} not answering after {PATIENCE_SECONDS:g} s;"
                " see their lines above"
            )
        time.sleep(0.3)
