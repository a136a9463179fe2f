"""The admin's warm-up of many keys of one namespace (ReadPath.warm; shared/readpath.py tells
what a warm-up promises): leases taken as by a read that wins, in chunks, each chunk's refreshes
handed to the queue right after."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack

from shared import answers, metrics
from shared.namespaces import Namespace
from shared.protocol import AdmitState, RefreshReason, WarmState
from shared.queuebound import QueueBound
from shared.store import CacheStore, new_token
from shared.tasks import RefreshRequest

log = logging.getLogger("herdless.engine")

SendRefresh = Callable[[RefreshRequest], None]
# Opens a batch of sends over one broker connection (a warm-up's): `with open_batch() as send:`.
OpenBatch = Callable[[], AbstractContextManager[SendRefresh]]

# Keys a warm-up takes leases for at once: each chunk's tasks are sent right after its leases
# are taken, so no key holds a lease and queued marker long without a task behind them.
WARM_CHUNK = 500


def warm_keys(
    store: CacheStore, queue: QueueBound, open_batch: OpenBatch, ns: Namespace, keys: list[str]
) -> answers.WarmResult:
    """Enqueue a refresh of every key that is neither fresh nor already being refreshed (keys
    validated by the caller; duplicates count once). Raises answers.WarmIncomplete when the queue
    refuses a task."""
    distinct = list(dict.fromkeys(keys))
    states: dict[str, str] = {}
    sent = full = 0
    batch = open_batch()
    with ExitStack() as on_exit:
        try:
            send = on_exit.enter_context(batch)
        except Exception as exc:  # noqa: BLE001 - kombu raises many types; all mean "no broker"
            log.warning("warm-up of %s: broker unavailable (%s)", ns.name, type(exc).__name__)
            raise answers.WarmIncomplete(0) from exc
        try:
            for start in range(0, len(distinct), WARM_CHUNK):
                tokens = {key: new_token() for key in distinct[start : start + WARM_CHUNK]}
                chunk, won_at_ms = store.warm(ns, tokens)
                won = [key for key, state in chunk.items() if state == WarmState.WON]
                for i, key in enumerate(won):
                    admitted = queue.admit_or_give_back(ns, key, tokens[key])
                    if admitted is AdmitState.QUEUED:
                        chunk[key] = WarmState.QUEUED
                    if admitted is not AdmitState.ADMITTED:
                        full += admitted is AdmitState.FULL
                        continue
                    try:
                        send(RefreshRequest(ns.name, key, tokens[key], RefreshReason.WARM, won_at_ms))
                    except Exception as exc:  # noqa: BLE001 - kombu raises many types; all mean "not sent"
                        log.warning(
                            "warm-up of %s: broker unavailable after %d refreshes (%s)",
                            ns.name,
                            sent,
                            type(exc).__name__,
                        )
                        # Keys of later chunks were never touched; give back this chunk's unsent.
                        _give_back(store, queue, ns, {k: tokens[k] for k in won[i:]})
                        raise answers.WarmIncomplete(sent) from exc
                    sent += 1
                states.update(chunk)
        finally:
            metrics.REFRESH_ENQUEUED.labels(ns.name, RefreshReason.WARM).inc(sent)
    counts = Counter(states.values())
    return answers.WarmResult(
        enqueued=sent,
        already_fresh=counts[WarmState.FRESH],
        in_flight=counts[WarmState.QUEUED] + counts[WarmState.HELD],
        cooling_down=counts[WarmState.COOLDOWN],
        queue_full=full,
    )


def _give_back(store: CacheStore, queue: QueueBound, ns: Namespace, tokens: dict[str, str]) -> None:
    try:
        store.finish_many(ns, tokens)
        for key, token in tokens.items():
            queue.depart(ns.name, key, token)
    except Exception:  # noqa: BLE001 - Redis is down too; the leases and markers expire
        log.warning("warm-up for namespace %s: could not give back %d leases", ns.name, len(tokens))
