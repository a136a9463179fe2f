"""The worker's own prometheus multiprocess directory: made by `python -m workers`, removed when
the worker stops, so that starting and stopping workers leaves no directory behind."""

from __future__ import annotations

import os
import shutil

# Names the directory `python -m workers` made for this worker (and only that one).
OWNED_METRICS_DIR = "HERDLESS_OWNED_METRICS_DIR"


def remove_owned_metrics_dir() -> None:
    owned = os.environ.get(OWNED_METRICS_DIR)
    if owned and owned == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(owned, ignore_errors=True)
