"""The pub/sub channels both tiers speak on, and their messages: built here, decoded here.

Channel and key names are the deployment's (``Keyspace`` in shared/keys.py): channels are
server-wide, so their names carry the prefix and the database (``<prefix>:<db>:ready``), and a
deployment hears only its own.

- the ready channel, ``<prefix>:<db>:ready``: a refresh of the key ended. ``{"ns", "key",
  "status"}``, status a ``ReadyStatus``: "ready" once a write script ran (whatever it stored),
  "error" once a failure was recorded. The write and record-failure scripts publish it
  themselves, in the step that changes the key, from a message built here (``ready_message``).
  When the origin's answer may not be stored (``no-store``, ``private``) the message also
  carries it: ``"body"`` (base64) and ``"ct"``, handed to the waiters it wakes and to no one else.
- the invalidation channel, ``<prefix>:<db>:inval``: a purge dropped the key. ``{"ns", "key"}``,
  plus ``"ack"`` (a list named ``<prefix>:inval-ack:<random>``) when the purge waits,
  ``PURGE_ACK_SECONDS`` at most, until every subscribed hub has pushed its confirmation there.
  A group purge (shared/group_purge.py) sends ``{"ns", "keys": [...]}`` (many keys of one
  namespace) or ``{"ns", "all": true}`` (the whole namespace) instead of ``"key"``, each with the
  purge's one ack list, which every hub pushes to once per message.
  Subscribed hubs are counted in ``<prefix>:subscribers`` (a sorted set of the deployment's own
  database: member = hub, score = until when its subscription counts; PUBLISH's receiver count
  would include other databases', and on Redis Cluster only one node's).

The web tier's subscriber (shared/coldwait.py) reads them with ``parse_message``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time
from typing import Any, NamedTuple

import redis

from shared.clock import redis_now_ms
from shared.keys import DEFAULT_KEYSPACE, Keyspace
from shared.protocol import ReadyStatus

log = logging.getLogger("herdless.channels")

PURGE_ACK_SECONDS = 1.0  # the longest a purge waits for every web process to drop the key


class HandedOver(NamedTuple):
    """An uncacheable origin answer, handed to the readers that waited for it."""

    body: bytes
    content_type: str


class Message(NamedTuple):
    """One message of either channel, decoded."""

    channel: str
    ns: str
    key: str
    status: ReadyStatus  # ready channel only (READY on the invalidation channel)
    ack: str | None  # invalidation channel only: where to confirm, if the purge waits
    handed_over: HandedOver | None  # ready channel only
    keys: tuple[str, ...] = ()  # invalidation channel only: a group purge's keys of ns (key is "")
    whole_namespace: bool = False  # invalidation channel only: a namespace purge (key is "")


def ready_message(ns: str, key: str, status: ReadyStatus, hand_over: HandedOver | None = None) -> str:
    """The ready channel's message for (ns, key)."""
    message: dict[str, str] = {"ns": ns, "key": key, "status": status}
    if hand_over is not None:
        message["body"] = base64.b64encode(hand_over.body).decode("ascii")
        message["ct"] = hand_over.content_type
    return json.dumps(message)


def invalidation_message(ns: str, key: str, ack: str | None = None) -> str:
    """The invalidation channel's message for (ns, key)."""
    message = {"ns": ns, "key": key}
    if ack is not None:
        message["ack"] = ack
    return json.dumps(message)


def parse_message(channel: str, data: bytes | str, keys: Keyspace = DEFAULT_KEYSPACE) -> Message | None:
    """A message received on `channel` (one of `keys`'), or None (logged) when it is not one of ours."""
    try:
        event = json.loads(data)
        ns = str(event["ns"])
        many = channel == keys.invalidation_channel and ("keys" in event or event.get("all") is True)
        key = "" if many else str(event["key"])
        group_keys = tuple(str(k) for k in event.get("keys") or ()) if many else ()
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed message on %s", channel)
        return None
    # A status this version does not know (a newer publisher's) says at least "re-read".
    status = ReadyStatus.ERROR if event.get("status") == ReadyStatus.ERROR else ReadyStatus.READY
    ack = event.get("ack")
    if channel != keys.invalidation_channel or not (isinstance(ack, str) and ack.startswith(keys.ack_prefix)):
        ack = None
    handed_over = _handed_over(event) if channel == keys.ready_channel else None
    return Message(channel, ns, key, status, ack, handed_over, group_keys, many and event.get("all") is True)


def _handed_over(event: dict[str, Any]) -> HandedOver | None:
    body = event.get("body")
    if not isinstance(body, str):
        return None
    try:
        return HandedOver(base64.b64decode(body, validate=True), str(event.get("ct") or "application/octet-stream"))
    except (binascii.Error, ValueError):
        log.warning("ignoring a malformed hand-over for namespace %s", event.get("ns"))
        return None


def registered_hubs(client: Any, keys: Keyspace = DEFAULT_KEYSPACE) -> int:
    """How many hubs of this deployment are subscribed now (their entries have not run out)."""
    return int(client.zcount(keys.subscribers, f"({redis_now_ms(client)}", "+inf"))


def publish_invalidation(
    client: Any, ns: str, key: str, *, ack_timeout: float = 0.0, keys: Keyspace = DEFAULT_KEYSPACE
) -> tuple[int, int]:
    """Tell every web process of the deployment (`keys`) to drop (ns, key) from its near-cache.
    With `ack_timeout`, wait until every subscribed hub of this deployment has dropped the key
    (at most that long). Returns (hubs subscribed, hubs that confirmed)."""
    if ack_timeout <= 0:
        client.publish(keys.invalidation_channel, invalidation_message(ns, key))
        return 0, 0
    ack = keys.ack_prefix + os.urandom(12).hex()
    receivers = registered_hubs(client, keys)
    client.publish(keys.invalidation_channel, invalidation_message(ns, key, ack))
    confirmed = 0
    deadline = time.monotonic() + ack_timeout
    try:
        while confirmed < receivers:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # Short slices: a BLPOP must never outwait the client's own read timeout, which
            # may be shorter than the whole bound (COLD_WAIT_TIMEOUT_SECONDS sets it in web).
            try:
                popped = client.blpop([ack], timeout=min(max(left, 0.01), 0.1))
            except redis.exceptions.TimeoutError:
                continue  # a client read timeout shorter still: try again until the bound
            if popped is not None:
                confirmed += 1
    finally:
        client.delete(ack)
    return receivers, confirmed


class InvalidationRound:
    """The invalidations of one group purge: any number of messages, each sent once its keys
    are purged in Redis, confirmed together (`wait`) through one ack list."""

    def __init__(self, client: Any, keys: Keyspace = DEFAULT_KEYSPACE) -> None:
        self.client, self.keys = client, keys
        self.ack = keys.ack_prefix + os.urandom(12).hex()
        self.receivers = registered_hubs(client, keys)
        self.sent = 0

    def publish(self, ns: str, keys: list[str] | None) -> None:
        """Tell every web process to drop these keys of `ns` (None: every key of `ns`)."""
        body: dict[str, Any] = {"ns": ns, "ack": self.ack}
        if keys is None:
            body["all"] = True
        else:
            body["keys"] = keys
        self.client.publish(self.keys.invalidation_channel, json.dumps(body))
        self.sent += 1

    def wait(self, timeout: float) -> tuple[int, int]:
        """Wait until every hub subscribed at the start confirmed every message (at most
        `timeout`). Returns (hubs subscribed, hubs that confirmed them all, as far as counted)."""
        expected = self.receivers * self.sent
        confirmed = 0
        deadline = time.monotonic() + timeout
        try:
            while True:
                confirmed = int(self.client.llen(self.ack))
                if confirmed >= expected or time.monotonic() >= deadline:
                    break
                time.sleep(0.005)  # hubs confirm within milliseconds; a poll is cheaper than a BLPOP each
        finally:
            self.client.delete(self.ack)
        if not self.sent:
            return self.receivers, self.receivers
        return self.receivers, min(self.receivers, confirmed // self.sent)
