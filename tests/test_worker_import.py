"""Importing the worker's task module builds nothing: no Celery app, no settings, no namespaces.
The app and each process's state come from the entry module and Celery's start-up signals, and
a worker process reads its namespaces file once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

from tests.stack import PYTHON, ROOT, RedisServer, free_port, wait_until

IMPORT_ONLY = textwrap.dedent(
    """
    import json, sys
    import celery._state
    import shared.settings
    built = []
    original_init = shared.settings.Settings.__init__
    def counting_init(self, *args, **kwargs):
        built.append(1)
        original_init(self, *args, **kwargs)
    shared.settings.Settings.__init__ = counting_init
    import workers.tasks
    print(json.dumps({
        "settings_built": len(built),
        "settings_cached": shared.settings.get_settings.cache_info().currsize,
        "apps": [app.main for app in list(celery._state._apps)],
        "current_app_is_default": celery._state.get_current_app() is celery._state.default_app,
        "entry_module_imported": "workers.celery_app" in sys.modules,
        "task_is_shared": "herdless.refresh" in celery._state.default_app.tasks,
    }))
    """
)


def _import_tasks(env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run([PYTHON, "-c", IMPORT_ONLY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_the_task_module_in_an_empty_environment_builds_no_app_and_reads_no_settings() -> None:
    found = _import_tasks({})
    assert found == {
        "settings_built": 0,
        "settings_cached": 0,
        "apps": [],  # not even the default app (the checks below make that one)
        "current_app_is_default": True,
        "entry_module_imported": False,
        "task_is_shared": True,  # @shared_task: registered on whichever app the process uses
    }


def test_importing_the_task_module_works_with_a_setting_the_settings_would_reject() -> None:
    found = _import_tasks({"LEASE_TTL_SECONDS": "-1", "WORKER_POOL": "nonsense"})
    assert found["settings_built"] == 0


COUNT_READS = textwrap.dedent(
    """
    import os, pathlib, runpy, sys
    log, watched = os.environ["READS_LOG"], pathlib.Path(os.environ["NAMESPACES_FILE"]).resolve()
    original = pathlib.Path.read_text
    def counting_read_text(self, *args, **kwargs):
        if pathlib.Path(self).resolve() == watched:
            with open(log, "a") as out:
                out.write(f"{os.getpid()}\\n")
        return original(self, *args, **kwargs)
    pathlib.Path.read_text = counting_read_text
    sys.argv = ["workers"]
    runpy.run_module("workers", run_name="__main__", alter_sys=True)
    """
)


def test_a_prefork_worker_reads_its_namespaces_file_once_in_all_its_processes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    namespaces = tmp_path / "namespaces.toml"
    namespaces.write_text('[namespaces.demo]\norigin = "http://127.0.0.1:9/items/{key}"\n')
    reads = tmp_path / "reads.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "REDIS_", "CELERY_", "PROMETHEUS_"))},
        "REDIS_URL": redis_server.url,
        "TMPDIR": str(tmp_path),
        "NAMESPACES_FILE": str(namespaces),
        "WORKER_POOL": "prefork",
        "WORKER_CONCURRENCY": "2",
        "WORKER_METRICS_PORT": str(free_port()),
        "READS_LOG": str(reads),
    }
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([PYTHON, "-c", COUNT_READS], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: b"ready." in log.read_bytes() or worker.poll() is not None, 60, "the worker ready")
        assert worker.poll() is None, log.read_text()[-2000:]
        # Both pool processes have run worker_process_init (and built their engines) by "ready.".
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log.read_text()[-2000:]
    finally:
        if worker.poll() is None:
            worker.kill()
    assert reads.read_text().split() == [str(worker.pid)]


def test_the_web_app_factory_reads_the_namespaces_file_once(redis_server: RedisServer, tmp_path: Path) -> None:
    namespaces = tmp_path / "namespaces.toml"
    namespaces.write_text('[namespaces.demo]\norigin = "http://127.0.0.1:9/items/{key}"\n')
    script = textwrap.dedent(
        """
        import os, pathlib
        watched, reads = pathlib.Path(os.environ["NAMESPACES_FILE"]).resolve(), []
        original = pathlib.Path.read_text
        def counting_read_text(self, *args, **kwargs):
            if pathlib.Path(self).resolve() == watched:
                reads.append(1)
            return original(self, *args, **kwargs)
        pathlib.Path.read_text = counting_read_text
        from web.app import create_app
        create_app()
        print(len(reads))
        os._exit(0)
        """
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_", "PROMETHEUS_"))},
        "REDIS_URL": redis_server.url,
        "NAMESPACES_FILE": str(namespaces),
    }
    started = time.monotonic()
    done = subprocess.run([PYTHON, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "1", (done.stdout, time.monotonic() - started)
