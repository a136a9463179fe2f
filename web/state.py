"""The web tier's per-process state, built once by the app factory and kept in app.extensions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app
from prometheus_client import CollectorRegistry

from shared.coldwait import ColdWaitHub
from shared.namespaces import Namespace
from shared.readpath import ReadPath
from shared.settings import Settings
from shared.store import CacheStore

EXTENSION = "herdless"
ADMITTED = "herdless.admitted"  # environ: the front door (web/front.py) holds this read's admission slot
# environ: the front door read this already (a cold waiter it joined) and hands the answer to the route
ANSWERED = "herdless.answered"


@dataclass
class WebState:
    settings: Settings
    namespaces: dict[str, Namespace]
    read_path: ReadPath
    celery: Any  # the Celery app used only to send tasks and read the queue depth
    waiter: ColdWaitHub
    metrics_registry: CollectorRegistry

    @property
    def store(self) -> CacheStore:
        return self.read_path.store


def web_state() -> WebState:
    state: WebState = current_app.extensions[EXTENSION]
    return state
