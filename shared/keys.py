"""Cache-key rules, and every Redis name one deployment uses (`Keyspace`): its keys, channels and queue."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from redis.connection import parse_url

from shared.namespaces import NAMESPACE_RE
from shared.settings import DEFAULT_PREFIX, Settings

MAX_KEY_BYTES = 512


class InvalidKey(ValueError):
    """The cache key or namespace is not acceptable; the message says why."""


def validate_namespace_name(name: str) -> str:
    if not NAMESPACE_RE.match(name):
        raise InvalidKey("namespace must be 1-64 characters of a-z, 0-9, '-' or '_'")
    return name


def decode_key(raw: bytes) -> str:
    """Decode and validate a key taken from the request path; raise InvalidKey when it is illegal."""
    try:
        key = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidKey("key is not valid UTF-8") from None
    return validate_key(key)


def validate_key(key: str) -> str:
    if not key:
        raise InvalidKey("key is empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey("key is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"key is {size} bytes of UTF-8; the limit is {MAX_KEY_BYTES}")
    for ch in key:
        if unicodedata.category(ch) == "Cc":
            raise InvalidKey(f"key contains the control character U+{ord(ch):04X}")
    return key


@dataclass(frozen=True)
class EntryKeys:
    """Redis keys of one cache entry: value hash, refresh lease, purge tombstone, queued marker;
    for a proxied URL also the request a refresh replays and (for the URL's primary key) the
    set of its Vary variants' keys (shared/proxy_store.py)."""

    entry: str
    lease: str
    tombstone: str
    queued: str
    request: str
    variants: str

    @classmethod
    def of(cls, namespace: str, key: str, prefix: str = DEFAULT_PREFIX) -> EntryKeys:
        # The braces make {namespace:key} the Cluster hash tag, so one script may touch all four;
        # the prefix stays outside them. A key holding "}" only shortens the tag; all four
        # names still share it.
        tag = f"{prefix}:{{{namespace}:{key}}}"
        return cls(
            entry=f"{tag}:e",
            lease=f"{tag}:l",
            tombstone=f"{tag}:t",
            queued=f"{tag}:q",
            request=f"{tag}:rq",
            variants=f"{tag}:vs",
        )


@dataclass(frozen=True)
class GroupKeys:
    """Redis keys of one group (a tag or a namespace, shared/group_scripts.py): its index of
    members and its last purge moment, under one hash tag."""

    members: str
    moment: str


@dataclass(frozen=True)
class Keyspace:
    """Every Redis name of one deployment, so that deployments sharing a Redis server never see
    each other's values, messages or tasks.

    Keys live in the deployment's database (REDIS_URL's), under ``<prefix>:``. Pub/sub channels
    are server-wide (a PUBLISH reaches the subscribers of every database), and the broker may be
    another database or server than REDIS_URL, so the channels, the Celery queue and the
    broker's own keys carry the database number as well: ``<prefix>:<db>:``. Two deployments on
    one server therefore need only another database *or* another prefix. The queue name uses
    dots: kombu's Redis transport splits its list names on ":" (the ``sep`` of shared/tasks.py)."""

    prefix: str = DEFAULT_PREFIX
    db: int = 0

    @classmethod
    def of(cls, settings: Settings) -> Keyspace:
        return _keyspace(settings.herdless_prefix, settings.redis_url)

    def entry(self, namespace: str, key: str) -> EntryKeys:
        return EntryKeys.of(namespace, key, self.prefix)

    def tag_group(self, tag: str) -> GroupKeys:
        return self._group(f"t:{tag}")

    def namespace_group(self, namespace: str) -> GroupKeys:
        return self._group(f"n:{namespace}")

    def _group(self, name: str) -> GroupKeys:
        # As for entries, a "}" in a tag only shortens the hash tag; both names still share it.
        tag = f"{self.prefix}:g:{{{name}}}"
        return GroupKeys(members=f"{tag}:m", moment=f"{tag}:p")

    # -- server-wide names: the prefix and the database ---------------------------------------
    @property
    def server_prefix(self) -> str:
        return f"{self.prefix}:{self.db}"

    @property
    def ready_channel(self) -> str:
        return f"{self.server_prefix}:ready"

    @property
    def invalidation_channel(self) -> str:
        return f"{self.server_prefix}:inval"

    @property
    def queue(self) -> str:
        """The Celery refresh queue (Redis broker: its lists are also under `broker_keyprefix`)."""
        return f"{self.prefix}.{self.db}.refresh"

    @property
    def broker_keyprefix(self) -> str:
        """kombu's `global_keyprefix`: every key and channel of the Redis broker (queue lists,
        bindings, unacked messages, the event and control channels) starts with it."""
        return f"{self.server_prefix}:"

    # -- keys of the deployment's database ------------------------------------------------------
    @property
    def subscribers(self) -> str:
        return f"{self.prefix}:subscribers"

    @property
    def ack_prefix(self) -> str:
        return f"{self.prefix}:inval-ack:"

    @property
    def rates_prefix(self) -> str:
        return f"{self.prefix}:rates:"

    def rates(self, second: int) -> str:
        return f"{self.rates_prefix}{second}"

    def keys_read(self, namespace: str, second: int) -> str:
        """A HyperLogLog of the keys of `namespace` read in `second`; one hash tag per namespace, so
        that one PFCOUNT counts the keys of many seconds (Cluster)."""
        return f"{self.prefix}:keys-read:{{{namespace}}}:{second}"

    def breaker(self, origin_name: str) -> str:
        # One hash tag per origin: the scripts touch the state key and the hash together (Cluster).
        return f"{self.prefix}:breaker:{{{origin_name}}}"

    def slots(self, origin_name: str) -> str:
        return f"{self.prefix}:slots:{{{origin_name}}}"

    # The registry of waiting refresh messages (shared/queuebound.py): one hash tag, so its
    # scripts touch all three on one Cluster node.
    @property
    def queue_waiting(self) -> str:
        return f"{self.prefix}:{{queue}}:waiting"

    @property
    def queue_tokens(self) -> str:
        return f"{self.prefix}:{{queue}}:tokens"

    @property
    def queue_consuming(self) -> str:
        return f"{self.prefix}:{{queue}}:consuming"


# The names of a deployment with the default prefix on database 0 (tests, and where no setting reaches).
DEFAULT_KEYSPACE = Keyspace()


@lru_cache(maxsize=16)
def _keyspace(prefix: str, redis_url: str) -> Keyspace:
    # Cached: send_refresh asks for the queue name on every enqueue.
    return Keyspace(prefix, int(parse_url(redis_url).get("db") or 0))
