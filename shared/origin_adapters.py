"""One process's origin adapters, built once per namespace, and the lifetimes of their answers."""

from __future__ import annotations

import logging
import threading
import time

from shared.freshness import CacheHeaders, CachePolicy, cache_policy
from shared.namespaces import Namespace
from shared.origin import Origin, make_origin

log = logging.getLogger("herdless.engine")


class OriginAdapters:
    """The origin of each namespace, built on first use; the read path's naive strategy and the
    refresher both call origins through it. Thread- and greenlet-safe."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._origins: dict[str, Origin] = {}
        self._lock = threading.Lock()
        self._malformed_reported: set[str] = set()  # origins whose bad Cache-Control was logged

    def get(self, ns: Namespace) -> Origin:
        origin = self._origins.get(ns.name)
        if origin is None:
            with self._lock:
                origin = self._origins.get(ns.name)
                if origin is None:
                    origin = self._origins[ns.name] = make_origin(ns, self._max_bytes)
        return origin

    def cache_policy(self, ns: Namespace, headers: CacheHeaders) -> CachePolicy:
        """Lifetimes of one origin answer (shared/freshness.py). A Cache-Control that does not
        parse is logged once per origin in this process, not once per call."""
        policy = cache_policy(ns, headers, time.time())
        if policy.malformed and ns.origin_name not in self._malformed_reported:
            with self._lock:
                first = ns.origin_name not in self._malformed_reported
                self._malformed_reported.add(ns.origin_name)
            if first:
                log.warning(
                    "origin %s sent a malformed Cache-Control (%s): namespace %s uses its own TTLs "
                    "for such answers; reported once per origin",
                    ns.origin_name,
                    policy.malformed,
                    ns.name,
                )
        return policy
