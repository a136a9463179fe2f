"""Command line: `python -m loadtest run|compare|hitbench|soak|refreshbench|betasweep|xfetchsweep|restart` (see
docs/loadtest.md)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from loadtest import xfetchsweep
from loadtest.openloop import SCENARIOS, RunConfig, run_blocking
from loadtest.preflight import DEFAULT_TTL, check_stack
from loadtest.workload import ARRIVALS

MAX_RATE = 5000
MAX_DURATION = 600
MAX_CLIENTS = 5000
DEFAULT_NAMESPACES = "demo-naive,demo-lock,demo-swr,demo"


class Refused(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"loadtest: refused: {message}")


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def check_bounds(args: argparse.Namespace) -> None:
    """Loopback only and sane sizes unless --force: a load test pointed at the wrong host is an attack."""
    if args.force:
        return
    for name in ("url", "origin_url"):
        url = getattr(args, name, None)
        if url and not is_loopback_url(url):
            raise Refused(f"--{name.replace('_', '-')} {url} is not a loopback address (add --force if you mean it)")
    for url in getattr(args, "metrics_url", None) or []:
        if not is_loopback_url(url):
            raise Refused(f"--metrics-url {url} is not a loopback address (add --force if you mean it)")
    rate = getattr(args, "rate", None)
    if rate is not None and rate > MAX_RATE:
        raise Refused(f"--rate {rate:g} is above {MAX_RATE} req/s (add --force if you mean it)")
    duration = getattr(args, "duration", None)
    if duration is not None and duration > MAX_DURATION:
        raise Refused(f"--duration {duration:g} is above {MAX_DURATION}s (add --force if you mean it)")
    minutes = getattr(args, "minutes", None)
    if minutes is not None and minutes * 60 > MAX_DURATION:
        raise Refused(f"--minutes {minutes:g} is above {MAX_DURATION // 60} minutes (add --force if you mean it)")
    clients = getattr(args, "clients", None)
    if clients is not None and clients > MAX_CLIENTS:
        raise Refused(f"--clients {clients} is above {MAX_CLIENTS} (add --force if you mean it)")
    keys_at_once = getattr(args, "n", None)
    if keys_at_once is not None and keys_at_once > MAX_CLIENTS:
        raise Refused(f"-n {keys_at_once} is above {MAX_CLIENTS} (add --force if you mean it)")


def _raise_fd_limit(wanted: int) -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(wanted, soft)), hard))
    except (ImportError, ValueError, OSError):
        pass


def raise_priority(args: argparse.Namespace) -> None:
    """Ask the OS to schedule the generator ahead of the stack, so it keeps its send schedule.

    The generator needs a fifth of a core at 1000 req/s; giving it priority costs the stack
    little and keeps a saturated server from delaying the sends. Needs root (or CAP_SYS_NICE);
    without it the run goes on at normal priority and the report says how late sends were.
    """
    if getattr(args, "no_renice", True):
        return
    try:
        os.nice(-5)
    except OSError:
        pass


def add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000", help="web tier base URL (default %(default)s)")
    p.add_argument(
        "--origin-url",
        default="http://127.0.0.1:9000",
        help="demo origin base URL, for /stats and /config (default %(default)s)",
    )
    p.add_argument(
        "--metrics-url",
        action="append",
        default=None,
        help="Prometheus page with herdless_queue_depth; repeatable "
        "(default http://127.0.0.1:9540/metrics then <url>/metrics)",
    )
    p.add_argument("--out", type=Path, default=None, help="results directory base (default loadtest/results)")
    p.add_argument(
        "--force", action="store_true", help="allow non-loopback targets and rates/durations past the bounds"
    )
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.add_argument(
        "--no-renice", action="store_true", help="do not raise the generator's scheduling priority (nice -5)"
    )


def add_workload_args(
    p: argparse.ArgumentParser, rate: float, duration: float | None, ttl_from_stack: bool = False
) -> None:
    p.add_argument("--scenario", choices=SCENARIOS, default="steady")
    p.add_argument("--rate", type=float, default=rate, help="requests per second (default %(default)s)")
    p.add_argument(
        "--duration",
        type=float,
        default=duration,
        help="seconds (default %(default)s; compare: 10 s of warm-up plus 6 TTLs, 30 to 120 s)",
    )
    p.add_argument("--keys", type=int, default=100, help="distinct keys (default %(default)s)")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of key popularity (default %(default)s)")
    if ttl_from_stack:
        p.add_argument(
            "--ttl",
            type=float,
            default=None,
            help="the namespace's TTL in seconds, for the per-TTL-window figures (default: its cache_ttl_seconds"
            " from the stack's GET /v1/namespaces, sent with ADMIN_TOKEN as a Bearer token when set; else 5)",
        )
    else:
        p.add_argument(
            "--ttl",
            type=float,
            default=5.0,
            help="the stack's CACHE_TTL_SECONDS, used for the per-TTL-window figure (default %(default)s); "
            "start the stack with the same value",
        )
    p.add_argument("--arrivals", choices=ARRIVALS, default="poisson")
    p.add_argument("--clients", type=int, default=1000, help="cold-herd: simultaneous clients (default %(default)s)")
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds excluded from after-warm-up and steady-state figures (default 10, or longer until every key"
        " was filled once; runs shorter than 4/3 of that count from one TTL instead)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-connections", type=int, default=512)
    p.add_argument("--timeout", type=float, default=15.0, help="per-request timeout, s")
    p.add_argument(
        "--drain",
        type=float,
        default=1.0,
        help="seconds to wait after the last response before the final origin count",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="then wait up to this long for queue depth 0 and no origin call in flight before counting origin"
        " calls (default %(default)s; the report says what was still queued if it ran out)",
    )


def make_config(args: argparse.Namespace, namespace: str, label: str = "", ttl: float | None = None) -> RunConfig:
    metrics = args.metrics_url or ["http://127.0.0.1:9540/metrics", args.url.rstrip("/") + "/metrics"]
    return RunConfig(
        url=args.url,
        namespace=namespace,
        scenario=args.scenario,
        rate=args.rate,
        duration=args.duration,
        keys=args.keys,
        zipf=args.zipf,
        ttl=ttl if ttl is not None else args.ttl,
        arrivals=args.arrivals,
        seed=args.seed,
        origin_url=args.origin_url,
        metrics_urls=metrics,
        max_connections=args.max_connections,
        timeout=args.timeout,
        clients=args.clients,
        warmup=args.warmup,
        drain=args.drain,
        drain_timeout=args.drain_timeout,
        progress=not args.quiet,
        label=label or namespace,
    )


def one_line(summary: dict) -> str:
    lat = summary["latency_ms"]
    return (
        f"{summary['run']['label']}: {summary['generator']['completed']} requests, errors"
        f" {summary['errors']['total']},"
        f" p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, p99.9 {lat.get('p99.9')} ms, max"
        f" {lat.get('max')} ms;"
        f" origin calls {summary['origin']['calls']}, per key per TTL window"
        f" {summary['origin']['calls_per_key_window']} (min 1)"
    ) + steady_line(summary)


def steady_line(summary: dict) -> str:
    from loadtest.report import pct, worker_word

    st = summary.get("steady")
    if not st:
        return ""
    return (
        f"\n  steady (after {st['from_s']:g}s, origin counted after drain): calls per key per TTL window"
        f" {st['calls_per_key_window']} ({st.get('calls_per_ideal_refresh')}x an ideal refresh-on-expiry cache's"
        f" {st.get('ideal_refresh_calls')} calls on this trace), fresh {pct(st['fresh_share'])},"
        f" hot-key fresh {pct(st['hot_fresh_share'])}"
        f" ({st['hot_keys']} hot keys), served age p99 {st['served_age_p99_s']} s, {st['throughput_rps']} req/s at"
        f" p99 {st['latency_p99_ms']} ms (served: {st.get('served_latency_p99_ms')} ms), errors {st['errors']},"
        f" MISS for served key {st['miss_for_served_key']},"
        f" worker {worker_word(summary)}"
    )


def add_proxy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--proxy",
        nargs="?",
        const="demo-proxy",
        default=None,
        metavar="NAMESPACE",
        help="read the demo origin's /items/<key> through this proxy namespace (default demo-proxy, the shipped"
        " one) at its mount: the origin sends Cache-Control: max-age=<--ttl> (default 5) for the run",
    )
    p.add_argument("--proxy-mount", default="/demo", help="the proxy namespace's mount (default %(default)s)")
    p.add_argument(
        "--proxy-swr",
        type=float,
        default=300.0,
        help="stale-while-revalidate the origin sends beside max-age (default %(default)s: STALE_TTL_SECONDS's"
        " default, so the workload is the key-value namespaces' one; 0 sends none, and every expired URL then"
        " waits for its revalidation, as RFC 9111 requires)",
    )


@contextlib.contextmanager
def origin_max_age(args: argparse.Namespace, ttl: float) -> Iterator[None]:
    """The demo origin's default Cache-Control set to max-age=<ttl> (and stale-while-revalidate=
    <--proxy-swr>) for a --proxy run, restored after."""
    import requests

    url = args.origin_url.rstrip("/") + "/config"
    previous = requests.put(url, json={}, timeout=5).json().get("cache_control")
    cache_control = f"max-age={ttl:g}" + (f", stale-while-revalidate={args.proxy_swr:g}" if args.proxy_swr else "")
    requests.put(url, json={"cache_control": cache_control}, timeout=5).raise_for_status()
    try:
        yield
    finally:
        requests.put(url, json={"cache_control": previous}, timeout=5)


def cmd_run(args: argparse.Namespace) -> int:
    from loadtest.report import new_results_dir, write_run_report
    from loadtest.summary import summarize

    _raise_fd_limit(args.clients + args.max_connections + 256)
    if getattr(args, "proxy", None):
        args.namespace = args.proxy
        args.ttl = args.ttl if args.ttl is not None else 5.0
        stack_ttls(args, [args.namespace])  # the namespace exists, its breaker is closed
        config = dataclasses.replace(
            make_config(args, args.namespace, ttl=args.ttl), path_style="proxy", proxy_mount=args.proxy_mount
        )
        with origin_max_age(args, args.ttl):
            result = run_blocking(config)
    else:
        ttls = stack_ttls(args, [args.namespace])
        result = run_blocking(make_config(args, args.namespace, ttl=ttls[args.namespace]))
    summary = summarize(result)
    directory = write_run_report(summary, new_results_dir(args.out, f"{args.scenario}-{args.namespace}"))
    print(one_line(summary))
    if summary.get("cold_herd"):
        herd = summary["cold_herd"]
        print(f"cold herd: {herd['clients']} clients -> {herd['origin_calls']} origin call(s), {herd['errors']} errors")
    if summary.get("outage"):
        o = summary["outage"]
        print(
            f"outage: errors on warm keys {o['errors_on_warm_keys_during_and_after']}, origin calls during"
            f" outage {o['origin_calls_during']}"
        )
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"report: {directory / 'report.md'}")
    return 0


def stack_ttls(args: argparse.Namespace, namespaces: list[str]) -> dict[str, float]:
    """{namespace: TTL} from the running stack (or --ttl); refuses while a breaker is open."""
    ttls = check_stack(args.url, namespaces, args.ttl, os.environ.get("ADMIN_TOKEN") or None)
    args.ttl = args.ttl if args.ttl is not None else ttls[namespaces[0]]  # for what reads args.ttl alone
    return ttls


def wait_for_quiet_queue(args: argparse.Namespace, timeout: float = 10.0) -> None:
    """Between strategies, let the previous run's refreshes finish so they are not billed to the next."""
    from loadtest.probes import QueueDepthProbe

    probe = QueueDepthProbe(make_config(args, "x").metrics_urls)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        depth = probe.read()
        if not depth:
            break
        time.sleep(0.25)


def parse_stack_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"loadtest: --stack-env wants NAME=VALUE, not {pair!r}")
        env[name] = value
    return env


def cmd_compare_with_nginx(args: argparse.Namespace) -> int:
    from loadtest.report import new_results_dir, terminal_table, write_compare_report
    from loadtest.stackbench import nginx_available, run_with_nginx

    if not nginx_available():
        raise SystemExit("loadtest: --with-nginx needs nginx on PATH (apt-get install -y nginx); it is not installed")
    if args.proxy:
        # herdless through its proxy namespace, nginx as before: both before the origin's /items/<key>,
        # both taking freshness from the Cache-Control it sends (origin_max_age's).
        base = make_config(args, args.proxy)
        cache_control = f"max-age={args.ttl:g}" + (
            f", stale-while-revalidate={args.proxy_swr:g}" if args.proxy_swr else ""
        )
        summaries = run_with_nginx(
            base,
            parse_stack_env(args.stack_env),
            args.proxy,
            proxy_mount=args.proxy_mount,
            origin_cache_control=cache_control,
        )
    else:
        base = make_config(args, args.nginx_namespace)
        summaries = run_with_nginx(base, parse_stack_env(args.stack_env), args.nginx_namespace)
    for summary in summaries:
        print(one_line(summary))
    directory = write_compare_report(summaries, new_results_dir(args.out, f"compare-nginx-{args.scenario}"))
    print()
    print(terminal_table(summaries))
    print(f"\nreport: {directory / 'report.md'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from loadtest.compare_plan import plan_compare, stack_namespaces
    from loadtest.report import new_results_dir, write_compare_report
    from loadtest.summary import summarize
    from loadtest.verdict import TABLE_LEGEND, problem_lines, short_table, verdict_line

    _raise_fd_limit(args.clients + args.max_connections + 256)
    if args.with_nginx:
        # A private stack, started with CACHE_TTL_SECONDS = --ttl: nothing to read.
        args.ttl = DEFAULT_TTL if args.ttl is None else args.ttl
        args.duration = 40.0 if args.duration is None else args.duration
        return cmd_compare_with_nginx(args)
    stack = stack_namespaces(args.url, os.environ.get("ADMIN_TOKEN") or None)
    asked = [n.strip() for n in args.namespaces.split(",") if n.strip()] if args.namespaces else None
    namespaces = plan_compare(args, asked, stack)
    ttls = stack_ttls(args, namespaces)
    summaries = []
    for i, namespace in enumerate(namespaces):
        if i:
            wait_for_quiet_queue(args)
            time.sleep(args.pause)
        summary = summarize(run_blocking(make_config(args, namespace, ttl=ttls[namespace])))
        summary["run"]["strategy"] = stack.get(namespace, {}).get("strategy")
        summaries.append(summary)
        print(one_line(summaries[-1]))
    directory = write_compare_report(summaries, new_results_dir(args.out, f"compare-{args.scenario}"))
    print()
    print(short_table(summaries))
    print(TABLE_LEGEND)
    print(f"full table, notes and figures: {directory / 'report.md'}")
    for line in problem_lines(summaries, args.rate):
        print(line)
    print(verdict_line(summaries))
    return 0


def cmd_hitbench(args: argparse.Namespace) -> int:
    import signal

    from launcher.processes import LaunchError
    from loadtest.hitbench import HitbenchSettings, hitbench_markdown, run_hitbench, terminal_summary
    from loadtest.report import command_line, new_results_dir
    from loadtest.workload import new_run_id

    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    unknown = [c for c in classes if c not in ("gevent", "gthread")]
    if not classes or unknown:
        raise SystemExit(f"loadtest: --classes wants gevent and/or gthread, not {args.classes!r}")
    settings = HitbenchSettings(
        classes=classes,
        web_concurrency=args.web_concurrency,
        web_threads=args.web_threads,
        rounds=args.rounds,
        round_seconds=args.round_seconds,
        connections=args.connections,
        namespace=args.namespace,
    )
    _raise_fd_limit(args.connections + 256)

    def stop_on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the stacks' context managers, which stop every process

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    run_id = new_run_id()
    try:
        result = run_hitbench(settings, run_id, progress=not args.quiet)
    except LaunchError as exc:
        raise SystemExit(f"loadtest: hitbench: {exc}") from exc
    report = {"command": command_line(), "commit": git_commit(), "machine": machine_facts(), **result}
    directory = new_results_dir(args.out, "hitbench")
    (directory / "report.json").write_text(json.dumps(report, indent=1))
    (directory / "report.md").write_text(hitbench_markdown(report))
    print(terminal_summary(report))
    print(f"report: {directory / 'report.md'}")
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from loadtest.report import new_results_dir, write_run_report
    from loadtest.soak import rss_table, snapshot_rss, stack_ports
    from loadtest.summary import summarize

    args.duration = args.minutes * 60
    args.scenario = "steady"
    ports = stack_ports(
        args.url, args.origin_url, args.metrics_url or ["http://127.0.0.1:9540/metrics"], args.redis_url
    )
    start = snapshot_rss(ports, args.pids)
    print("RSS at start:")
    print(rss_table(start, None))
    result = run_blocking(make_config(args, args.namespace, label=f"soak-{args.namespace}"))
    end = snapshot_rss(ports, args.pids)
    print("RSS at end:")
    print(rss_table(end, start))
    summary = summarize(result)
    summary["rss"] = {"start": start, "end": end}
    directory = write_run_report(summary, new_results_dir(args.out, "soak"))
    with open(directory / "report.md", "a") as f:
        f.write("\n## Process memory (RSS)\n\n```\n" + rss_table(end, start) + "\n```\n")
    print(one_line(summary))
    print(f"errors: {summary['errors']['total']}")
    print(f"report: {directory / 'report.md'}")
    return 0


def git_commit() -> str | None:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def machine_facts() -> dict:
    import platform

    from loadtest.summary import machine_description

    return {"cpu_count": os.cpu_count(), "python": platform.python_version(), "description": machine_description()}


def _env_number(name: str, default: float) -> float:
    # read once here, for the defaults shown in --help; the stack validates its own copy (shared/settings.py)
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise SystemExit(f"loadtest: {name}={os.environ[name]!r} is not a number") from None


def refresh_line(r: dict) -> str:
    return (
        f"{r['pool']} round {r['round']}: {r['served']}/{r['keys']} keys served, {r['served_per_s']} refreshes/s"
        f" (limit {r['limit_per_s']}/s, ratio {r['ratio_to_limit']}), all served in {r['all_served_s']} s,"
        f" errors {r['errors_by_status'] or 0}, origin max in flight {r['origin_max_in_flight']}"
        + (f", CPU ms/key {r['cpu_ms_per_key']}" if r.get("cpu_ms_per_key") else "")
    )


def cmd_refreshbench(args: argparse.Namespace) -> int:
    from loadtest.launcher import LocalStack
    from loadtest.refreshbench import BenchSettings, markdown, run_refreshbench, table
    from loadtest.report import command_line, new_results_dir

    _raise_fd_limit(args.n + 512)
    if args.clients:
        return _overload_bench(args)
    results = []
    if not args.pools:
        settings = BenchSettings(
            args.pool_label,
            args.worker_concurrency,
            args.origin_max_concurrency,
            args.origin_latency_ms,
            args.cold_wait_timeout,
        )
        for r in range(args.rounds):
            result = run_refreshbench(args.url, args.origin_url, args.namespace, args.n, settings)
            results.append({**result, "round": r + 1, "stack": "given"})
            print(refresh_line(results[-1]), flush=True)
    else:
        pools = [p.strip() for p in args.pools.split(",") if p.strip()]
        for r in range(args.rounds):
            for pool in pools:  # alternate pools within each round, so drift hits both alike
                concurrency = args.prefork_concurrency if pool == "prefork" else args.worker_concurrency
                settings = BenchSettings(
                    pool, concurrency, args.origin_max_concurrency, args.origin_latency_ms, args.cold_wait_timeout
                )
                # Every key of the burst admitted: this mode measures the refresh tier, not shedding.
                room = str(max(1000, args.n + 100))
                env = {**settings.stack_env(), "MAX_COLD_WAITERS": room, "MAX_REQUESTS_IN_FLIGHT": room}
                with LocalStack(env=env) as stack:
                    result = run_refreshbench(
                        stack.web_urls[0],
                        stack.origin_url,
                        args.namespace,
                        args.n,
                        settings,
                        cpu_seconds=stack.cpu_seconds,
                    )
                results.append({**result, "round": r + 1, "stack": "started by refreshbench"})
                print(refresh_line(results[-1]), flush=True)
    directory = new_results_dir(args.out, "refreshbench")
    report = {
        "command": command_line(),
        "seed": args.seed,
        "commit": git_commit(),
        "machine": machine_facts(),
        "results": results,
    }
    (directory / "report.json").write_text(json.dumps(report, indent=1))
    (directory / "report.md").write_text(markdown(results, report["command"], report["machine"]["description"]))
    print()
    print(table(results))
    print(f"\nreport: {directory / 'report.json'}")
    return 0


def _overload_bench(args: argparse.Namespace) -> int:
    """--clients: per round and pool, one stack; on it the burst (--clients, all at once) and the
    paced baseline (--baseline-clients), alternating which goes first; both and their ratio."""
    import subprocess

    from loadtest.launcher import LocalStack
    from loadtest.refreshbench import BenchSettings, clients_line, overload_verdict, run_clients
    from loadtest.report import command_line, new_results_dir

    if not args.pools:
        raise SystemExit("loadtest: --clients needs --pools (it starts the stack it measures)")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    rows = []
    try:
        for r in range(args.rounds):
            for pool in [p.strip() for p in args.pools.split(",") if p.strip()]:
                concurrency = args.prefork_concurrency if pool == "prefork" else args.worker_concurrency
                settings = BenchSettings(
                    pool, concurrency, args.origin_max_concurrency, args.origin_latency_ms, args.cold_wait_timeout
                )
                modes = [("paced", args.baseline_clients, False), ("burst", args.clients, args.connect_with_request)]
                if r % 2:
                    modes.reverse()  # drift hits both alike
                with LocalStack(env=settings.stack_env()) as stack:
                    runs = {}
                    for label, clients, with_request in modes:
                        res = run_clients(
                            stack.web_urls[0],
                            stack.origin_url,
                            args.namespace,
                            args.n,
                            clients,
                            settings,
                            connect_with_request=with_request,
                            retry_s=None if args.no_retry else 1.0,
                            cpu_seconds=stack.cpu_seconds,
                        )
                        runs[label] = {**res, "label": label, "round": r + 1, "hogs": args.hogs}
                        print(clients_line(runs[label]), flush=True)
                verdict = overload_verdict(runs["burst"], runs["paced"], args.cold_wait_timeout)
                print(f"round {r + 1} {pool}: burst/paced keys per second = {verdict['ratio']} {verdict}", flush=True)
                rows.append({"round": r + 1, "pool": pool, **runs, "verdict": verdict})
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    directory = new_results_dir(args.out, "overloadbench")
    report = {"command": command_line(), "commit": git_commit(), "machine": machine_facts(), "rows": rows}
    (directory / "report.json").write_text(json.dumps(report, indent=1))
    print(f"\nreport: {directory / 'report.json'}")
    return 0


def cmd_betasweep(args: argparse.Namespace) -> int:
    from loadtest.plots import betasweep_figure
    from loadtest.report import command_line, new_results_dir
    from loadtest.stackbench import run_betasweep

    _raise_fd_limit(args.max_connections + 256)
    betas = [float(b) for b in args.betas.split(",") if b.strip()]
    if any(b < 0 for b in betas):
        raise SystemExit("loadtest: --betas must be >= 0")
    args.scenario = "steady"
    rows, summaries = run_betasweep(make_config(args, args.namespace), betas, parse_stack_env(args.stack_env))
    directory = new_results_dir(args.out, "betasweep")
    betasweep_figure(rows, directory / "betasweep.png")
    command = command_line()
    report = {
        "command": command,
        "seed": args.seed,
        "commit": git_commit(),
        "machine": machine_facts(),
        "rows": rows,
        "runs": summaries,
    }
    (directory / "report.json").write_text(json.dumps(report, indent=1))
    (directory / "report.md").write_text(betasweep_markdown(rows, summaries, command, report["machine"]))
    print()
    print(betasweep_table(rows))
    print(f"\nreport: {directory / 'report.md'}")
    return 0


BETA_COLUMNS = (
    ("beta", lambda r: f"{r['beta']:g}"),
    ("calls/key/TTL window", lambda r: _fmt(r["calls_per_key_window"], 3)),
    ("hot fresh", lambda r: _pct(r["hot_fresh_share"])),
    ("fresh", lambda r: _pct(r["fresh_share"])),
    ("p99 ms", lambda r: _fmt(r["p99_ms"], 2)),
    ("served age p99 s", lambda r: _fmt(r["served_age_p99_s"], 2)),
    ("req/s", lambda r: _fmt(r["throughput_rps"], 1)),
    ("errors", lambda r: str(r["errors"])),
    ("worker", lambda r: "n/a" if r["worker_saturated"] is None else "SATURATED" if r["worker_saturated"] else "ok"),
)


def _fmt(value: object, digits: int) -> str:
    from loadtest.summary import fmt

    return fmt(value, digits)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def betasweep_table(rows: list[dict]) -> str:
    table = [[name for name, _ in BETA_COLUMNS]] + [[get(r) for _, get in BETA_COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(BETA_COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def betasweep_markdown(rows: list[dict], summaries: list[dict], command: str, machine: dict) -> str:
    first = summaries[0]["run"] if summaries else {}
    header = [name for name, _ in BETA_COLUMNS]
    lines = [
        "# herdless XFETCH_BETA sweep",
        "",
        f"`{command}`",
        "",
        f"- Machine: {machine['description']}",
        f"- A fresh stack per beta; {first.get('arrivals')} arrivals at {first.get('rate')} req/s for"
        f" {first.get('duration_s')} s, {first.get('keys')} keys, Zipf {first.get('zipf')}, TTL {first.get('ttl_s')} s;"
        f" counted after {summaries[0]['steady']['from_s'] if summaries else '?'} s of warm-up",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(get(r) for _, get in BETA_COLUMNS) + " |" for r in rows],
        "",
        "![calls per key window vs hot-key fresh share](betasweep.png)",
        "",
    ]
    notes = [f"{s['run']['label']}: {n}" for s in summaries for n in s["notes"]]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def add_refreshbench_parser(sub: argparse._SubParsersAction) -> None:
    from loadtest.refreshbench import (
        DEFAULT_ORIGIN_LATENCY_MS,
        DEFAULT_ORIGIN_MAX_CONCURRENCY,
        DEFAULT_WORKER_CONCURRENCY,
        PREFORK_CONCURRENCY,
    )

    p = sub.add_parser(
        "refreshbench",
        help="N never-seen keys at once: refreshes per second against min(worker, origin concurrency) / latency",
    )
    p.add_argument("-n", type=int, default=2000, help="never-seen keys, one request each (default %(default)s)")
    p.add_argument("--namespace", default="demo")
    p.add_argument(
        "--pools",
        default="",
        help="comma-separated worker pools (e.g. prefork,gevent): start and stop a private stack per pool"
        " (redis, origin, gunicorn, worker on free ports) instead of using --url",
    )
    p.add_argument("--rounds", type=int, default=1, help="repeat, alternating the pools (default %(default)s)")
    p.add_argument(
        "--worker-concurrency",
        type=int,
        default=int(_env_number("WORKER_CONCURRENCY", DEFAULT_WORKER_CONCURRENCY)),
        help="refreshes one worker runs at once (default $WORKER_CONCURRENCY or %(default)s)",
    )
    p.add_argument(
        "--prefork-concurrency",
        type=int,
        default=PREFORK_CONCURRENCY,
        help="WORKER_CONCURRENCY for the prefork pool with --pools (default %(default)s, the old default)",
    )
    p.add_argument(
        "--origin-max-concurrency",
        type=int,
        default=int(_env_number("ORIGIN_MAX_CONCURRENCY", DEFAULT_ORIGIN_MAX_CONCURRENCY)),
        help="default $ORIGIN_MAX_CONCURRENCY or %(default)s",
    )
    p.add_argument(
        "--origin-latency-ms",
        type=float,
        default=_env_number("ORIGIN_LATENCY_MS", DEFAULT_ORIGIN_LATENCY_MS),
        help="default $ORIGIN_LATENCY_MS or %(default)s",
    )
    p.add_argument(
        "--cold-wait-timeout",
        type=float,
        default=_env_number("COLD_WAIT_TIMEOUT_SECONDS", 10.0),
        help="the stack's COLD_WAIT_TIMEOUT_SECONDS (default $COLD_WAIT_TIMEOUT_SECONDS or %(default)s: filling "
        "N cold keys takes N / capacity seconds, and the bench measures that capacity, so each waiter may "
        "wait as long as the 10 s bound in which every key must be served)",
    )
    p.add_argument(
        "--pool-label",
        default=os.environ.get("WORKER_POOL", "gevent"),
        help="without --pools: the given stack's worker pool, for the table (default $WORKER_POOL or %(default)s)",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="without --pools: web tier (default %(default)s)")
    p.add_argument("--origin-url", default="http://127.0.0.1:9000", help="without --pools: demo origin")
    p.add_argument("--seed", type=int, default=None, help="recorded in the report (the keys are new every run)")
    p.add_argument("--out", type=Path, default=None, help="results directory base (default loadtest/results)")
    p.add_argument(
        "--clients",
        type=int,
        default=0,
        help="overload mode: the -n keys over this many clients at once, each asking for its share in"
        " sequence, beside a paced baseline (--baseline-clients) on the same stack; prints both and their ratio",
    )
    p.add_argument(
        "--baseline-clients", type=int, default=50, help="with --clients: the paced baseline (default %(default)s)"
    )
    p.add_argument(
        "--connect-with-request",
        action="store_true",
        help="with --clients: each burst client opens its connection as it sends its first request",
    )
    p.add_argument(
        "--no-retry",
        action="store_true",
        help="with --clients: a refused key is not asked for again (by default after 1 s, as Retry-After says)",
    )
    p.add_argument(
        "--hogs", type=int, default=0, help="with --clients: CPU hogs (while True: pass) running beside the stack"
    )
    p.add_argument("--force", action="store_true", help="allow non-loopback targets and -n above the bound")
    p.set_defaults(func=cmd_refreshbench)


def cmd_restart(args: argparse.Namespace) -> int:
    from loadtest.report import command_line, new_results_dir
    from loadtest.restartbench import MODES, markdown, run_restart_bench

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"loadtest: --modes wants {','.join(MODES)} (or one of them), not {args.modes!r}")
    restart_at = args.duration / 3 if args.restart_at is None else args.restart_at
    if not 0 < restart_at < args.duration:
        raise SystemExit("loadtest: --restart-at must fall inside the run")
    _raise_fd_limit(args.max_connections + 256)
    args.scenario = "steady"
    rows = run_restart_bench(
        make_config(args, args.namespace),
        modes,
        restart_at,
        parse_stack_env(args.stack_env),
        down_seconds=args.down_seconds,
    )
    directory = new_results_dir(args.out, "restart")
    config = make_config(args, args.namespace)
    report = {
        "command": command_line(),
        "commit": git_commit(),
        "machine": machine_facts(),
        "restart_at": restart_at,
        "down_seconds": args.down_seconds,
        "config": {k: getattr(config, k) for k in ("namespace", "rate", "duration", "keys", "zipf", "ttl", "seed")},
        "rows": rows,
    }
    (directory / "report.json").write_text(json.dumps(report, indent=1))
    (directory / "report.md").write_text(markdown(report))
    print(f"\nreport: {directory / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="herdless load test: an open-loop generator, stampede scenarios, the strategies side by"
        " side, and a hit-path benchmark. Reports go to loadtest/results/<timestamp>/.",
        epilog="examples:\n"
        "  python -m loadtest run --namespace demo --rate 1000 --duration 60 --keys 100 --zipf 1.1\n"
        "  python -m loadtest run --scenario cold-herd --clients 1000\n"
        "  python -m loadtest compare --rate 500 --duration 20\n"
        "  python -m loadtest hitbench --classes gevent,gthread --rounds 5\n"
        "  python -m loadtest soak --minutes 10 --rate 500\n"
        "  python -m loadtest refreshbench -n 2000 --pools prefork,gevent --rounds 3\n"
        "  python -m loadtest betasweep --betas 0,0.5,1,2,4 --rate 500 --duration 60 --ttl 5\n"
        "  python -m loadtest compare --with-nginx --rate 500 --duration 60 --ttl 5\n"
        "  python -m loadtest restart --rate 300 --duration 20 --keys 1000\n"
        "run and compare read each namespace's TTL from the running stack (GET /v1/namespaces, with ADMIN_TOKEN"
        " as a Bearer token when set) and refuse to start while its origin's circuit breaker is open; the other"
        " commands start stacks of their own with CACHE_TTL_SECONDS = --ttl.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="one scenario against one namespace (open loop)")
    add_target_args(p)
    add_workload_args(p, rate=200, duration=20, ttl_from_stack=True)
    p.add_argument("--namespace", default="demo")
    add_proxy_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "steady",
        help="the steady workload (1000 keys, Zipf 1.1, TTL 5 s) against one namespace; with --proxy, through a"
        " proxy namespace, the TTL being the origin's max-age",
    )
    add_target_args(p)
    add_workload_args(p, rate=1000, duration=60, ttl_from_stack=True)
    p.set_defaults(keys=1000, ttl=5.0)
    p.add_argument("--namespace", default="demo")
    add_proxy_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="the same scenario against each strategy's namespace, one after another")
    add_target_args(p)
    add_workload_args(p, rate=200, duration=None, ttl_from_stack=True)
    p.add_argument(
        "--namespaces",
        default=None,
        help=f"comma-separated (default: {DEFAULT_NAMESPACES} when the stack has them, else every namespace it has)",
    )
    p.add_argument("--pause", type=float, default=1.0, help="seconds between strategies (default %(default)s)")
    p.add_argument(
        "--with-nginx",
        action="store_true",
        help="instead of the strategies: start a private stack (2 web nodes) and nginx proxy_cache nodes before its"
        " demo origin; compare herdless 1 node, herdless 2 nodes, nginx 1 node, nginx 2 nodes (--url is not used)",
    )
    p.add_argument("--nginx-namespace", default="demo", help="herdless namespace for --with-nginx (default demo)")
    add_proxy_args(p)  # with --with-nginx: herdless reads through the proxy namespace, as nginx proxies
    p.add_argument(
        "--stack-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="with --with-nginx: environment for the started stack (repeatable)",
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "hitbench",
        help="closed-loop throughput of a warm key on private stacks: herdless with the near-cache on and off vs"
        " Flask + one redis-py GET, per gunicorn worker class",
        description="For each worker class, start a private stack (redis-server, demo origin, worker) with three web"
        " tiers under web/gunicorn.conf.py and the same WEB_WORKER_CLASS, WEB_CONCURRENCY and WEB_THREADS: herdless"
        " NEAR_CACHE=true, herdless NEAR_CACHE=false, and loadtest/baseline_app.py. Warm one key, run closed-loop"
        " rounds alternating the three in rotating order, report, and stop everything. It measures no running"
        " stack: there is no --url.",
    )
    p.add_argument(
        "--classes", default="gevent,gthread", help="comma-separated WEB_WORKER_CLASS values (default %(default)s)"
    )
    p.add_argument("--web-concurrency", type=int, default=2, help="WEB_CONCURRENCY of every tier (default %(default)s)")
    p.add_argument(
        "--web-threads", type=int, default=4, help="WEB_THREADS of every tier, gthread only (default %(default)s)"
    )
    p.add_argument("--namespace", default="demo", help="herdless namespace of the warm key (default %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per class, each runs every target (default 5)")
    p.add_argument("--round-seconds", type=float, default=5.0, help="seconds per target per round (default 5)")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections (default %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="results directory base (default loadtest/results)")
    p.add_argument("--force", action="store_true", help="allow --connections past the bound")
    p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    p.set_defaults(func=cmd_hitbench)

    p = sub.add_parser("soak", help="steady load for minutes; prints the stack's RSS at start and end")
    add_target_args(p)
    add_workload_args(p, rate=500, duration=600)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--namespace", default="demo")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--pids", type=int, nargs="*", default=[], help="more processes to watch")
    p.set_defaults(func=cmd_soak)

    add_refreshbench_parser(sub)
    xfetchsweep.add_parser(sub)

    p = sub.add_parser(
        "betasweep",
        help="the steady workload on a fresh private stack per XFETCH_BETA: origin cost vs fresh hot-key answers",
    )
    add_workload_args(p, rate=200, duration=30)
    p.add_argument("--betas", default="0,0.5,1,2,4", help="comma-separated XFETCH_BETA values (default %(default)s)")
    p.add_argument("--namespace", default="demo", help="an xfetch namespace without its own xfetch_beta")
    p.add_argument(
        "--stack-env", action="append", default=[], metavar="NAME=VALUE", help="more stack environment (repeatable)"
    )
    p.add_argument("--out", type=Path, default=None, help="results directory base (default loadtest/results)")
    p.add_argument("--force", action="store_true", help="allow rates/durations past the bounds")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.add_argument("--no-renice", action="store_true")
    p.set_defaults(
        func=cmd_betasweep, url="http://127.0.0.1:8000", origin_url="http://127.0.0.1:9000", metrics_url=None
    )
    p = sub.add_parser(
        "restart",
        help="Redis restarted empty under steady load, on a fresh private stack per mode: cold misses without and"
        " with a warm-up (POST /v1/cache/<namespace>/warm of every key, hottest first, once /readyz is back)",
    )
    add_workload_args(p, rate=300, duration=20)
    p.set_defaults(ttl=60.0, keys=1000)
    p.add_argument("--namespace", default="demo", help="namespace of the load (default %(default)s)")
    p.add_argument(
        "--restart-at", type=float, default=None, help="seconds into the load (default a third of --duration)"
    )
    p.add_argument(
        "--down-seconds",
        type=float,
        default=0.0,
        help="how long Redis stays down before it starts empty (default %(default)s: at once); meanwhile warm"
        " keys are answered STALE from the web processes' memory",
    )
    p.add_argument("--modes", default="no-warm-up,warm-up", help="comma-separated (default %(default)s)")
    p.add_argument(
        "--stack-env", action="append", default=[], metavar="NAME=VALUE", help="more stack environment (repeatable)"
    )
    p.add_argument("--out", type=Path, default=None, help="results directory base (default loadtest/results)")
    p.add_argument("--force", action="store_true", help="allow rates/durations past the bounds")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    p.add_argument("--no-renice", action="store_true")
    p.set_defaults(func=cmd_restart, url="http://127.0.0.1:8000", origin_url="http://127.0.0.1:9000", metrics_url=None)
    p = sub.add_parser(
        "cachetests",
        help="the HTTP cache test suite (cache-tests.fyi, npm http-cache-tests) through a proxy namespace at its"
        " defaults on a private stack; prints required/optimal tests passed beside the published peers'",
    )
    p.add_argument("--id", default="", help="run one test and print its requests and responses")
    p.add_argument(
        "--out", type=Path, default=Path("loadtest/results/cachetests.json"), help="results JSON (default %(default)s)"
    )
    p.add_argument("--grade", type=Path, default=None, metavar="RESULTS_JSON", help="only grade a results file")
    p.set_defaults(func=cmd_cachetests, force=False, no_renice=True)
    return parser


def cmd_cachetests(args: argparse.Namespace) -> int:
    from loadtest import cachetests

    return cachetests.main(test_id=args.id, out=args.out, results_file=args.grade)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_bounds(args)
    raise_priority(args)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
