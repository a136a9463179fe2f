"""The Redis server's clock: the only clock herdless decides by. A module of its own, importing
nothing of herdless, so that every module (the metrics' rate recorder included) can use it."""

from __future__ import annotations

from typing import Any


def redis_now_ms(client: Any) -> int:
    """The Redis server's clock in ms (TIME)."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000
