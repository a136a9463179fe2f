"""Entry module for `celery -A workers.celery_app ...` (Flower): builds the worker's app at
import, as Flask's `make_celery.py` does. Nothing else imports it; `python -m workers` builds its
own app (workers/__main__.py)."""

from __future__ import annotations

from shared.namespaces import load_namespaces
from shared.settings import load_settings
from workers.app import make_celery

_settings = load_settings()
app = make_celery(_settings, load_namespaces(_settings))
