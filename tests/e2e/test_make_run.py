"""`make run` itself: the whole stack starts in the foreground, serves, says where everything is,
and any stop (Ctrl-C, SIGTERM to make), with output piped or not, ends every process it started."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import socket
import subprocess
import termios
import time
from pathlib import Path

import psutil
import requests

from tests.stack import ROOT, RedisServer, free_port, port_open, wait_until

PORT_NAMES = ("WEB_PORT", "ORIGIN_PORT", "WORKER_METRICS_PORT", "FLOWER_PORT")
MAKE_RUN = "make --no-print-directory -o .venv/.installed-run run"  # installing is not under test


def stack_env(ports: dict[str, int], **extra: str) -> dict[str, str]:
    """This environment with private ports: other stacks on this machine are left alone."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PROMETHEUS_MULTIPROC_DIR", "REDIS_URL", "CELERY_BROKER_URL", "FLOWER_BASIC_AUTH")
    }
    env.update({name: str(port) for name, port in ports.items()})
    env["WORKER_METRICS_URL"] = f"http://127.0.0.1:{ports['WORKER_METRICS_PORT']}/metrics"
    env.update(extra)
    return env


def start_piped(shell: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Its own session, like a terminal's foreground job: a signal to the group reaches bash, make,
    # the supervisor and the pipe's reader, and nothing else.
    return subprocess.Popen(["bash", "-c", shell], cwd=ROOT, env=env, start_new_session=True)


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def assert_all_gone(started: list[psutil.Process], ports: dict[str, int], signalled_at: float) -> None:
    """Every process gone and every port closed within 10 s of the stop signal."""

    def all_gone() -> bool:
        return not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    wait_until(all_gone, max(0.1, signalled_at + 10 - time.monotonic()), "every process make run started to exit")
    assert not any(port_open(port) for port in ports.values()), ports


def test_make_run_piped_prints_its_urls_on_loopback_and_sigterm_to_make_after_the_reader_died_leaves_nothing(
    tmp_path: Path,
) -> None:
    ports = {name: free_port() for name in PORT_NAMES}
    dead_redis = free_port()  # nothing listens there
    env_file = tmp_path / ".env"
    # The .env's REDIS_URL is the one checked; the shell's WEB_PORT wins over the .env's.
    env_file.write_text(f"# a developer's .env\nREDIS_URL=redis://127.0.0.1:{dead_redis}/0\nWEB_PORT=1\n")
    log = tmp_path / "make-run.log"
    shell = start_piped(f"{MAKE_RUN} 2>&1 | cat > {log}", stack_env(ports, ENV_FILE=str(env_file)))
    started: list[psutil.Process] = []
    try:

        def block() -> str:
            assert shell.poll() is None, log.read_text(errors="replace")[-3000:]
            text = log.read_text(errors="replace")
            return text[text.index("herdless is ready") :] if "herdless is ready" in text else ""

        ready = wait_until(block, 90, "the block of URLs", interval=0.3)
        web = f"http://127.0.0.1:{ports['WEB_PORT']}"
        assert f"{web}/v1/cache/demo/hello" in ready and f"{web}/metrics" in ready, ready
        assert f"http://127.0.0.1:{ports['WORKER_METRICS_PORT']}/metrics" in ready, ready
        flower = re.search(rf"http://127\.0\.0\.1:{ports['FLOWER_PORT']}  user (\S+), password (\S+) ", ready)
        assert flower, ready
        private = re.search(r"Redis +redis://127\.0\.0\.1:(\d+)/0 \(private redis-server", ready)
        assert private and int(private[1]) != dead_redis, ready
        assert "127.0.0.1 only (BIND_HOST)" in ready, ready

        assert requests.get(f"{web}/v1/cache/demo/sigterm", timeout=10).status_code == 200  # the private Redis
        login = (flower[1], flower[2])
        assert requests.get(f"http://127.0.0.1:{ports['FLOWER_PORT']}/api/workers", auth=login, timeout=10).ok

        started = descendants(shell.pid)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        for role in ("run_stack", "gunicorn", "workers", "demo_origin", "flower", "redis-server"):
            assert role in names, names
        listening = [c for p in started for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
        assert {c.laddr.port for c in listening} >= set(ports.values()) | {int(private[1])}, listening
        assert {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening

        (redis_server,) = [p for p in started if p.name() == "redis-server"]
        temp_dirs = [Path(redis_server.cwd())]  # its --dir
        gunicorn = next(p for p in started if "gunicorn" in " ".join(p.cmdline()))
        temp_dirs.append(Path(gunicorn.environ()["PROMETHEUS_MULTIPROC_DIR"]))  # the one it was started with
        assert all(d.is_dir() for d in temp_dirs), temp_dirs

        # The pipe's reader dies first (tee under the same Ctrl-C): the stack must neither stop
        # nor block on its broken stdout, and still stop when told.
        (reader,) = [p for p in started if p.name() == "cat"]
        (make,) = [p for p in started if p.name() == "make"]
        reader.kill()
        reader.wait(5)
        assert requests.get(f"{web}/v1/cache/demo/reader-gone", timeout=10).status_code == 200
        signalled_at = time.monotonic()
        make.send_signal(signal.SIGTERM)  # what a supervisor, `timeout` or CI does: to make alone
        shell.wait(10)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(10)
    assert_all_gone(started, ports, signalled_at)
    assert not any(d.exists() for d in temp_dirs), temp_dirs


def test_ctrl_c_in_a_terminal_stops_everything_make_exits_0_and_tee_keeps_the_whole_log(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    ports = {name: free_port() for name in PORT_NAMES}
    env = stack_env(ports, REDIS_URL=redis.url, ENV_FILE=str(tmp_path / "none.env"))
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")  # given, so kept
    (tmp_path / "metrics").mkdir()
    log, status = tmp_path / "make-run.log", tmp_path / "make-status"
    # `make run 2>&1 | tee log` typed into a terminal: a pseudo-terminal whose foreground job is
    # this bash and its pipeline; ^C written to it is the kernel's SIGINT to that foreground job.
    controller, terminal = pty.openpty()
    with open(tmp_path / "bash.out", "wb") as bash_out:
        shell = subprocess.Popen(
            ["bash", "-c", f'{MAKE_RUN} 2>&1 | cat > {log}; echo "${{PIPESTATUS[0]}}" > {status}'],
            cwd=ROOT,
            env=env,
            stdin=terminal,
            stdout=bash_out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # its controlling terminal
        )
    os.close(terminal)
    started: list[psutil.Process] = []
    try:
        url = f"http://127.0.0.1:{ports['WEB_PORT']}/v1/cache/demo/make-run"

        def served() -> bool:
            assert shell.poll() is None, log.read_text(errors="replace")[-3000:]
            return requests.get(url, timeout=10).status_code == 200

        wait_until(served, 90, "make run to serve a cold key", interval=0.5)
        assert requests.get(url, timeout=5).headers["X-Cache"] == "HIT"
        flower = f"http://127.0.0.1:{ports['FLOWER_PORT']}/healthcheck"
        wait_until(lambda: requests.get(flower, timeout=2).ok, 60, "Flower", interval=0.5)
        started = descendants(shell.pid)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        for role in ("run_stack", "gunicorn", "workers", "demo_origin", "flower"):
            assert role in names, names
        assert "redis-server" not in names, names  # REDIS_URL answered

        signalled_at = time.monotonic()
        os.write(controller, b"\x03")  # Ctrl-C
        shell.wait(10)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(10)
        os.close(controller)
        redis.stop()
    assert_all_gone(started, ports, signalled_at)
    assert status.read_text().strip() == "0", log.read_text(errors="replace")[-2000:]  # no `Error 130`
    text = log.read_text(errors="replace")
    assert "herdless: stopped (SIGINT); no process of this run is left" in text, text[-2000:]
    assert "make: ***" not in text, text[-2000:]
    assert (tmp_path / "metrics").is_dir()


def test_make_run_never_prints_a_redis_password_given_as_a_query_parameter(tmp_path: Path) -> None:
    # `?password=` is how a unix socket URL carries it (redis-py reads it over TCP too); kombu
    # refuses it, so the broker gets the password in its user:password@, a raw @ in it.
    password = "qp-Secret-4e1f@tail"
    redis = RedisServer(tmp_path / "redis", password=password).start()
    ports = {name: free_port() for name in PORT_NAMES}
    url = f"redis://127.0.0.1:{redis.port}/0?password={password}"
    broker = f"redis://:{password}@127.0.0.1:{redis.port}/0"
    env = stack_env(ports, REDIS_URL=url, CELERY_BROKER_URL=broker, ENV_FILE=str(tmp_path / "none.env"))
    log = tmp_path / "make-run.log"
    shell = start_piped(f"{MAKE_RUN} 2>&1 | cat > {log}", env)
    try:
        cold = f"http://127.0.0.1:{ports['WEB_PORT']}/v1/cache/demo/query-password"

        def served() -> bool:
            assert shell.poll() is None, log.read_text(errors="replace")[-3000:]
            return "herdless is ready" in log.read_text(errors="replace") and (
                requests.get(cold, timeout=10).status_code == 200
            )

        wait_until(served, 90, "make run to serve through the password-protected Redis", interval=0.5)
        flower = f"http://127.0.0.1:{ports['FLOWER_PORT']}/healthcheck"
        wait_until(lambda: requests.get(flower, timeout=2).ok, 60, "Flower", interval=0.5)
        os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(15)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(10)
        redis.stop()
    text = log.read_text(errors="replace")
    assert f"127.0.0.1:{redis.port}/0?password=***" in text, text[-3000:]
    for part in (password, password.split("@")[0], "@tail"):
        assert part not in text, (part, [line for line in text.splitlines() if part in line])


def test_make_run_names_every_taken_port_at_once_and_starts_nothing(tmp_path: Path) -> None:
    ports = {name: free_port() for name in PORT_NAMES}
    holders = []
    for name in ("WEB_PORT", "FLOWER_PORT"):  # another stack's web tier and Flower, say
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", ports[name]))
        holder.listen()
        holders.append(holder)
    try:
        result = subprocess.run(
            ["bash", "-c", MAKE_RUN], cwd=ROOT, env=stack_env(ports), capture_output=True, text=True, timeout=120
        )
    finally:
        for holder in holders:
            holder.close()
    said = result.stdout + result.stderr
    assert result.returncode != 0, said[-2000:]
    assert f"{ports['WEB_PORT']} (WEB_PORT)" in said and f"{ports['FLOWER_PORT']} (FLOWER_PORT)" in said, said[-2000:]
    assert "ORIGIN_PORT)" not in said and "Listening at" not in said, said[-2000:]  # nothing started
