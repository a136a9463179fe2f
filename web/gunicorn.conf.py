"""gunicorn settings for the web tier, driven by the same environment as everything else."""

import shutil
import subprocess
import sys

from shared.metrics_dir import make_metrics_dir
from shared.namespaces import NamespaceConfigError, load_namespaces
from shared.settings import load_settings
from web.gunicorn_date import keep_application_date

keep_application_date()  # a proxied answer keeps the origin's Date
_settings = load_settings()  # a bad variable stops gunicorn here, named
try:
    _namespaces = load_namespaces(_settings, import_callables=False)
except NamespaceConfigError as _exc:
    print(_exc, file=sys.stderr)  # one line: file, namespace, field
    sys.exit(2)
# Callable origins must import here too, or gunicorn stops with one line naming the namespace and
# the module. Checked in a child process: imported into this master, their modules (ssl,
# requests...) would reach every worker forked from it before gevent patches them.
if any(not _ns.is_http for _ns in _namespaces.values()):
    _check = "from shared.settings import load_settings; from shared.namespaces import load_namespaces; "
    if subprocess.run([sys.executable, "-c", _check + "load_namespaces(load_settings())"], check=False).returncode:
        sys.exit(2)  # the child printed the line

bind = _settings.web_bind  # BIND_HOST:WEB_PORT unless WEB_BIND says otherwise
workers = _settings.web_concurrency
worker_class = _settings.web_worker_class
threads = _settings.web_threads  # gthread only
# gevent only: room for every permitted cold-miss waiter plus the requests being answered.
worker_connections = _settings.max_cold_waiters + 1000
backlog = 4096
# Above the proxy's own limits (web/proxy_target.py), so that a request past those gets its 414/431
# as JSON; only one past these gets gunicorn's plain 400.
limit_request_line = 8190
limit_request_field_size = 16380
keepalive = 30
timeout = 60
graceful_timeout = 20
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
proc_name = "herdless-web"
# gunicorn >= 25.1 opens a control socket for `gunicornc` in $XDG_RUNTIME_DIR or else
# $HOME/.gunicorn: in the image HOME is the read-only /app, so every start logged an error, and
# every gunicorn of one user on a host shares the one path. herdless does not use gunicornc.
# Older gunicorn ignores the unknown name, so this is safe with any version pyproject allows.
control_socket_disable = True

# prometheus_client multiprocess mode: one fresh directory per gunicorn master.
_metrics_dir = make_metrics_dir("web")


def child_exit(server, worker):  # noqa: ANN001 - gunicorn hook signature
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ANN001
    shutil.rmtree(_metrics_dir, ignore_errors=True)
