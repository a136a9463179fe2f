"""Proxied URLs as cache keys: the key of a target and its Vary variant, the stored response's
envelope, the request a refresh replays, and the purge of a URL with all its variants.

A proxied URL is an ordinary key of its namespace (the lease, fences, near-cache and breaker
apply unchanged), named by a hash:

- the *primary* key of a target (path and query after the mount, as sent) is
  ``p:<hash(target)>``. It holds the response when the response has no Vary, and a *vary
  marker* (the names Vary lists) when it has one;
- a *variant* key ``p:<hash(target, variant)>`` holds the response selected by one set of
  request header values (``httpcache.vary.variant_key``); the primary's ``:vs`` set lists them,
  so a purge of the URL reaches every variant.

The entry's value is an envelope: a JSON head (status, header list, request and response
times, selecting headers, target) and the body, marked by the content type ``PROXIED_TYPE``.
A refresh replays the request saved under the key's ``:rq`` (target, forwardable headers, the
Vary names the key was computed with), saved by the read that won the lease, just before it
enqueued; never a credential the namespace was not told to forward (shared/proxy_config.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from shared.httpcache.fields import Headers, get_all
from shared.httpcache.lifetime import StoredResponse
from shared.keys import Keyspace
from shared.namespaces import Namespace
from shared.scripts import READ
from shared.store import CacheStore, ReadResult

PROXIED_TYPE = "application/vnd.herdless.proxied"
_MAGIC = b"HLP1"
KEY_PREFIX = "p:"
# How long the request a refresh replays is kept: a refresh whose record expired falls back to
# what the stored entry says (its target and selecting headers).
REQUEST_RECORD_SECONDS = 86400
# How long a primary key's vary marker lives: it only says which headers select a variant; a
# variant that the origin re-keys is caught by the variant's own Vary.
VARY_MARKER_SECONDS = 86400


def credentials_of(ns: Namespace, headers: Headers) -> str:
    """The forwarded credentials of a request: part of its key, so that no other credential's
    response answers it (the read's key and the refresh's variant key alike)."""
    assert ns.proxy is not None
    return "\n".join(f"{n}:{v}" for n in sorted(ns.proxy.forward_headers) for v in get_all(headers, n))


def proxy_key(target: str, variant: str | None = None, credentials: str = "") -> str:
    """The cache key of a target (primary: `variant` None) or of one of its variants."""
    h = hashlib.blake2b(digest_size=20)
    h.update(target.encode("utf-8", "surrogateescape"))
    if variant is not None:
        h.update(b"\0v\0" + variant.encode("utf-8", "surrogateescape"))
    if credentials:
        h.update(b"\0c\0" + credentials.encode("utf-8", "surrogateescape"))
    return KEY_PREFIX + h.hexdigest()


@dataclass(frozen=True)
class Envelope:
    """A stored proxied response (kind "response") or a primary key's vary marker (kind "vary")."""

    kind: str
    target: str
    status: int = 0
    headers: Headers = ()
    body: bytes = b""
    request_time: float = 0.0
    response_time: float = 0.0
    selecting_headers: Headers = ()
    vary: tuple[str, ...] = ()  # a marker's field names
    # A handed-over answer (never stored): the read whose request was replayed for it, and
    # whether it is that reader's alone (private, Set-Cookie), not for others who waited too.
    reader: str = ""
    personal: bool = False

    @property
    def is_marker(self) -> bool:
        return self.kind == "vary"

    def stored_response(self) -> StoredResponse:
        return StoredResponse(
            self.status, self.headers, self.request_time, self.response_time, "GET", self.selecting_headers
        )

    def encode(self) -> bytes:
        head = {
            "k": self.kind,
            "t": self.target,
            "s": self.status,
            "h": [list(p) for p in self.headers],
            "rq": self.request_time,
            "rs": self.response_time,
            "sel": [list(p) for p in self.selecting_headers],
            "f": list(self.vary),
        }
        if self.reader or self.personal:
            head["r"], head["p"] = self.reader, self.personal
        raw = json.dumps(head, separators=(",", ":")).encode("utf-8", "surrogateescape")
        return _MAGIC + b"%08x" % len(raw) + raw + self.body

    @classmethod
    def decode(cls, value: bytes | None) -> Envelope | None:
        """None for anything that is not an envelope (a value stored by another version)."""
        if not value or not value.startswith(_MAGIC):
            return None
        try:
            size = int(value[4:12], 16)
            head = json.loads(value[12 : 12 + size])
            return cls(
                kind=str(head["k"]),
                target=str(head["t"]),
                status=int(head["s"]),
                headers=tuple((str(n), str(v)) for n, v in head["h"]),
                body=value[12 + size :],
                request_time=float(head["rq"]),
                response_time=float(head["rs"]),
                selecting_headers=tuple((str(n), str(v)) for n, v in head["sel"]),
                vary=tuple(str(f) for f in head["f"]),
                reader=str(head.get("r", "")),
                personal=bool(head.get("p", False)),
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class ProxyRequest:
    """What a refresh of one key replays: the target, the forwardable request headers, the
    Vary names the key was computed with (() for a primary key), and the read it was taken
    from ("" for none: a warm-up, a refresh of what is stored)."""

    target: str
    headers: Headers = ()
    vary: tuple[str, ...] = ()
    reader: str = ""

    def encode(self) -> str:
        return json.dumps(
            {"t": self.target, "h": [list(p) for p in self.headers], "f": list(self.vary), "r": self.reader}
        )

    @classmethod
    def decode(cls, raw: Any) -> ProxyRequest | None:
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return cls(
                str(data["t"]),
                tuple((str(n), str(v)) for n, v in data["h"]),
                tuple(str(f) for f in data["f"]),
                str(data.get("r", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class PendingRequests:
    """The requests of this process's reads in flight, by key: when a read wins a key's lease
    and enqueues its refresh, the enqueue saves a reader's request for the worker to replay.
    Any reader's request of a key will do: the key is the hash of what selects the response."""

    _by_key: dict[tuple[str, str], list[ProxyRequest]] = field(default_factory=dict)

    @contextmanager
    def held(self, ns: str, key: str, request: ProxyRequest) -> Iterator[None]:
        holders = self._by_key.setdefault((ns, key), [])
        holders.append(request)
        try:
            yield
        finally:
            holders.remove(request)
            if not holders and self._by_key.get((ns, key)) is holders:
                del self._by_key[(ns, key)]

    def get(self, ns: str, key: str) -> ProxyRequest | None:
        holders = self._by_key.get((ns, key))
        return holders[-1] if holders else None


class ProxyStore:
    """The Redis side of proxied URLs beside CacheStore's: request records, variant sets, a read
    that takes no lease, and the purge of a URL."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self.redis = store.redis
        self.keys: Keyspace = store.keys
        self._peek = self.redis.register_script(READ)

    def save_request(self, ns: Namespace, key: str, request: ProxyRequest) -> None:
        self.redis.set(self.keys.entry(ns.name, key).request, request.encode(), ex=REQUEST_RECORD_SECONDS)

    def load_request(self, ns: Namespace, key: str) -> ProxyRequest | None:
        return ProxyRequest.decode(self.redis.get(self.keys.entry(ns.name, key).request))

    def stored(self, ns: Namespace, key: str) -> Envelope | None:
        """The envelope stored for the key, if any (for a refresh's validators)."""
        return Envelope.decode(self.redis.hget(self.keys.entry(ns.name, key).entry, "v"))

    def peek(self, ns: Namespace, key: str) -> ReadResult:
        """READ without trying the lease (an only-if-cached request, a revalidation's wait)."""
        k = self.keys.entry(ns.name, key)
        args = [repr(ns.beta), self.store.lease_ttl_ms, "-", "1", "0", self.store.queued_marker_ttl_ms]
        return ReadResult.from_reply(self._peek(keys=[k.entry, k.lease, k.queued], args=args))

    def add_variant(self, ns: Namespace, primary: str, variant: str) -> None:
        name = self.keys.entry(ns.name, primary).variants
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(name, variant)
        pipe.expire(name, VARY_MARKER_SECONDS * 2)
        pipe.execute()

    def variants(self, ns: Namespace, primary: str) -> list[str]:
        raw = self.redis.smembers(self.keys.entry(ns.name, primary).variants)
        return sorted(v.decode() if isinstance(v, bytes) else str(v) for v in raw)

    def forget_variants(self, ns: Namespace, primary: str) -> None:
        self.redis.delete(self.keys.entry(ns.name, primary).variants)
