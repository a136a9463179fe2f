"""Cache-key rules and the Redis key names of one cache entry (all sharing one hash tag)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from shared.namespaces import NAMESPACE_RE

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
    """Redis keys of one cache entry: value hash, refresh lease, purge tombstone, queued marker."""

    entry: str
    lease: str
    tombstone: str
    queued: str

    @classmethod
    def of(cls, namespace: str, key: str) -> EntryKeys:
        # The braces make {namespace:key} the Cluster hash tag, so one script may touch all three.
        # A key holding "}" only shortens the tag; all four names still share it.
        tag = f"hl:{{{namespace}:{key}}}"
        return cls(entry=f"{tag}:e", lease=f"{tag}:l", tombstone=f"{tag}:t", queued=f"{tag}:q")
