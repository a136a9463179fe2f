"""Flower settings for herdless: `celery -A workers.celery_app flower --conf=monitoring/flowerconfig.py`.

Port and credentials are not set here: Flower reads FLOWER_PORT and
FLOWER_BASIC_AUTH from the environment first and this file would override
them. (Flower also rejects any other FLOWER_* variable it does not know.)
The listening address comes from BIND_HOST, as for every other process of the
stack (so FLOWER_ADDRESS has no effect).
"""

import logging as _logging

from shared.settings import load_settings as _load_settings

# Flower asks the workers (inspect) as it starts, usually before a worker answers, and warns
# "Inspect method ... failed" for each method: nothing to act on; its dashboard shows the
# workers once they answer.
_logging.getLogger("flower.inspector").setLevel(_logging.ERROR)

# Loopback unless BIND_HOST says otherwise (docker-compose sets 0.0.0.0).
address = _load_settings().bind_host

# Refresh tasks take about one origin call (ORIGIN_LATENCY_MS, 100 ms in the
# demo) up to ORIGIN_TIMEOUT_SECONDS; the default buckets stop at 10 s and are
# coarse around 100 ms. Floats: tornado checks the option's element type.
task_runtime_metric_buckets = [0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]

# Forget workers that have been offline for 5 minutes, so a scaled-down or
# restarted worker does not stay on the dashboard as offline forever.
purge_offline_workers = 300

# A busy cache enqueues many refreshes; keep Flower's memory bounded.
max_tasks = 10000
