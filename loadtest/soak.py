"""Memory over a long run: finds the stack's processes by their listening ports and reads their RSS."""

from __future__ import annotations

from urllib.parse import urlsplit

from loadtest.probes import command_line, rss_bytes, stack_processes


def _port(url: str, default: int) -> int:
    parts = urlsplit(url)
    return parts.port or default


def stack_ports(web_url: str, origin_url: str, metrics_urls: list[str], redis_url: str) -> dict[str, int]:
    ports = {"web": _port(web_url, 80), "origin": _port(origin_url, 80), "redis": _port(redis_url, 6379)}
    for i, url in enumerate(metrics_urls):
        ports["worker" if i == 0 else f"metrics{i}"] = _port(url, 80)
    return ports


def snapshot_rss(ports: dict[str, int], extra_pids: list[int]) -> list[dict]:
    rows = []
    for pid, role in sorted(stack_processes(ports, extra_pids).items()):
        rss = rss_bytes(pid)
        if rss is not None:
            rows.append({"pid": pid, "role": role, "rss_mib": round(rss / 2**20, 1), "cmd": command_line(pid)[:80]})
    return rows


def rss_table(rows: list[dict], before: list[dict] | None) -> str:
    if not rows:
        return "  (no stack processes found: pass --pids)"
    earlier = {r["pid"]: r["rss_mib"] for r in before or []}
    lines = []
    for r in rows:
        delta = ""
        if r["pid"] in earlier:
            delta = f" ({r['rss_mib'] - earlier[r['pid']]:+.1f})"
        elif before is not None:
            delta = " (new)"
        lines.append(f"  {r['role']:<8} pid {r['pid']:>7}  {r['rss_mib']:>8.1f} MiB{delta}  {r['cmd']}")
    total = sum(r["rss_mib"] for r in rows)
    lines.append(f"  total {total:.1f} MiB" + (f" ({total - sum(earlier.values()):+.1f})" if before else ""))
    return "\n".join(lines)
