"""Generator parts that need no stack: response parsing, queue-depth scraping, safety bounds, summaries."""

from __future__ import annotations

import array
import asyncio
from collections import Counter
from pathlib import Path

import pytest

from loadtest.__main__ import build_parser, check_bounds, is_loopback_url
from loadtest.httpclient import ConnectionPool, _Connection, _parse_chunked, build_get
from loadtest.openloop import X_CACHE_CODES, Records, RunConfig, RunResult
from loadtest.probes import parse_queue_depth
from loadtest.report import markdown_table, terminal_table, write_run_report
from loadtest.summary import summarize


def test_response_head_parsing_reads_the_headers_the_report_needs() -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-Cache: STALE\r\n"
        b"Cache-Control: max-age=0, stale-while-revalidate=300\r\nConnection: keep-alive"
    )
    status, x_cache, cache_control, body_start, chunked, close, length, age = _Connection._parse_head(head, 99)
    assert (status, x_cache, body_start, chunked, close, length, age) == (200, "STALE", 99, False, False, 12, -1)
    assert cache_control.startswith("max-age=0")
    *_, close, length, _age = _Connection._parse_head(b"HTTP/1.1 304 Not Modified\r\nConnection: close", 0)
    assert close and length == 0


def test_chunked_body_is_reassembled_only_once_complete() -> None:
    body = bytearray(b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\nNEXT")
    assert _parse_chunked(body, 0) == (b"Wikipedia", len(body) - 4)
    assert _parse_chunked(bytearray(b"4\r\nWi"), 0) is None
    assert _parse_chunked(bytearray(b"4\r\nWiki\r\n0\r\n"), 0) is None


def test_client_round_trips_against_a_local_server() -> None:
    """Keep-alive reuse, and a retry when the server closed an idle connection."""

    async def scenario() -> tuple[list[int], int]:
        served = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal served
            await reader.readuntil(b"\r\n\r\n")
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Cache: HIT\r\n\r\nok")
            await writer.drain()
            if served % 2 == 0:  # every second connection is closed by the server after one answer
                writer.close()
                return
            await reader.readuntil(b"\r\n\r\n")
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Cache: MISS\r\n\r\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool("127.0.0.1", port, max_connections=1, timeout=5)
        statuses = []
        for _ in range(4):
            resp = await pool.get(build_get(pool.host_header, "/x"))
            statuses.append(resp.status)
            await asyncio.sleep(0.05)
        pool.close()
        server.close()
        await server.wait_closed()
        return statuses, pool.connects

    statuses, connects = asyncio.run(scenario())
    assert statuses == [200, 200, 200, 200]
    assert connects >= 2


def test_queue_depth_is_summed_over_queues() -> None:
    page = (
        "# HELP herdless_queue_depth Refresh tasks waiting\n# TYPE herdless_queue_depth gauge\n"
        'herdless_queue_depth{queue="herdless"} 3.0\nherdless_queue_depth{queue="herdless:3"} 2.0\n'
        'herdless_queue_depth_other{queue="x"} 100.0\n'
    )
    assert parse_queue_depth(page) == 5.0
    assert parse_queue_depth("# TYPE herdless_queue_depth gauge\n") == 0.0
    assert parse_queue_depth("flower_events_total 3\n") is None


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--url", "http://10.1.2.3:8000"],
        ["run", "--origin-url", "http://example.com:9000"],
        ["run", "--rate", "5001"],
        ["run", "--duration", "601"],
        ["run", "--scenario", "cold-herd", "--clients", "100000"],
        ["soak", "--minutes", "11"],
    ],
)
def test_unsafe_targets_and_sizes_are_refused_without_force(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    with pytest.raises(SystemExit, match="refused"):
        check_bounds(args)
    check_bounds(build_parser().parse_args([*argv, "--force"]))


def test_loopback_detection() -> None:
    assert is_loopback_url("http://127.0.0.1:8000")
    assert is_loopback_url("http://localhost:8000")
    assert is_loopback_url("http://[::1]:8000")
    assert not is_loopback_url("http://192.168.1.10:8000")


def _synthetic_result(tmp_ttl: float = 1.0) -> RunResult:
    """Two keys for 3 s at 10 req/s each; the origin was called 7 times; one error."""
    rec = Records()
    hit, miss = X_CACHE_CODES.index("HIT"), X_CACHE_CODES.index("MISS")
    for i in range(60):
        t = i * 0.05
        rec.offset.append(t)
        rec.latency.append(0.002 if i % 10 else 0.150)
        rec.lag.append(0.0005)
        rec.status.append(502 if i == 30 else 200)
        rec.x_cache.append(hit if i % 10 else miss)
        rec.key.append(i % 2)
    cfg = RunConfig(rate=20, duration=3, keys=2, ttl=tmp_ttl, progress=False)
    return RunResult(
        config=cfg,
        run_id="test",
        key_prefix="run-test-",
        started_at=1_800_000_000.0,
        records=rec,
        error_kinds=Counter({"http_502": 1}),
        key_names=["run-test-k0", "run-test-k1"],
        seconds=3,
        origin_calls_per_second=[3, 2, 2, 0],
        origin_total_per_second=[3, 2, 2, 0],
        queue_depth_per_second=[0.0, 1.0, 0.0],
        origin_calls=7,
        origin_calls_all_keys=7,
        origin_per_key={"run-test-k0": 4, "run-test-k1": 3},
        scheduled=60,
        sent_elapsed=2.95,
        elapsed=3.2,
        peak_connections=3,
        connects=3,
        waited_for_connection=0,
        max_age_seen=1,
    )


def test_summary_computes_the_key_figure_and_per_second_series() -> None:
    summary = summarize(_synthetic_result())
    assert summary["origin"]["key_windows"] == 6  # 2 keys x 3 one-second windows
    assert summary["origin"]["calls_per_key_window"] == pytest.approx(7 / 6, abs=1e-3)
    assert summary["errors"]["total"] == 1
    assert summary["x_cache"] == {"HIT": 54, "MISS": 6}
    assert summary["latency_ms"]["max"] == pytest.approx(150, rel=0.01)
    assert summary["latency_ms"]["p50"] == pytest.approx(2, rel=0.01)
    assert summary["generator"]["kept_schedule"] is True
    ps = summary["per_second"]
    assert ps["requests"] == [20, 20, 20]
    assert ps["errors"] == [0, 1, 0]
    assert ps["origin_calls"] == [3, 2, 2]
    assert ps["x_cache"]["MISS"] == [2, 2, 2]


def test_run_report_writes_markdown_json_and_three_figures(tmp_path: Path) -> None:
    summary = summarize(_synthetic_result())
    write_run_report(summary, tmp_path, command="python -m loadtest run (test)")
    md = (tmp_path / "report.md").read_text()
    assert "Origin calls per key per TTL window: 1.167" in md
    for name in ("latency.png", "xcache.png", "origin.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    table = markdown_table([summary, summary])
    assert table.count("\n") == 3
    assert "calls/key/TTL window" in terminal_table([summary])


def test_records_are_compact_columns() -> None:
    rec = Records()
    assert isinstance(rec.offset, array.array) and len(rec) == 0


def test_a_request_times_out_from_its_deadline_even_while_waiting_for_a_connection() -> None:
    async def scenario() -> tuple[str, str, float]:
        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # hold the connection open without answering

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool("127.0.0.1", port, max_connections=1, timeout=30)
        loop = asyncio.get_running_loop()
        raw = build_get(pool.host_header, "/slow")
        start = loop.time()
        first, second = await asyncio.gather(
            pool.get(raw, deadline=start + 0.3), pool.get(raw, deadline=start + 0.1), return_exceptions=True
        )
        elapsed = loop.time() - start
        pool.close()
        server.close()
        return type(first).__name__, type(second).__name__, elapsed

    first, second, elapsed = asyncio.run(scenario())
    assert (first, second) == ("HTTPTimeout", "HTTPTimeout")  # the second never got the only connection
    assert elapsed < 1.0
