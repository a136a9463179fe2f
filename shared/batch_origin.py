"""A batch origin's call (GET with {keys} filled in), and the collector gathering a worker's due keys into calls.

The answer is a JSON object {key: value}; each value is stored as its JSON text (content type
application/json), and a key the object leaves out is that key's 404. The call's own failures
(unreachable, a timeout, a 5xx, a body that is not a JSON object) are every key's failure; a
value over ORIGIN_MAX_BYTES is its key's alone."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from urllib.parse import quote

from shared.batch_config import MAX_URL_CHARS, BatchConfig
from shared.namespaces import Namespace
from shared.origin import (
    IDLE_CONNECTIONS,
    HttpOrigin,
    KeyFault,
    NotFound,
    OriginError,
    OriginResponse,
    OriginTooLarge,
    Validators,
)

# What a batch call answered for one key: its value, None (left out: a 404), or its own fault.
KeyAnswer = OriginResponse | None | OriginError


def encode_keys(keys: list[str]) -> str:
    """The {keys} of a batch URL: each key percent-encoded (a comma in a key becomes %2C), comma-joined."""
    return ",".join(quote(key, safe="") for key in keys)


class BatchHttpOrigin(HttpOrigin):
    """The batch origin of a namespace: the namespace's headers, its timeout, one connection
    pool; a whole answer may be `batch_max_keys` times ORIGIN_MAX_BYTES, each value ORIGIN_MAX_BYTES."""

    conditional = False  # one validator cannot stand for many values

    def __init__(self, ns: Namespace, max_bytes: int, connections: int = IDLE_CONNECTIONS) -> None:
        assert ns.batch is not None
        super().__init__(ns, max_bytes * ns.batch.max_keys, connections)
        self.template = ns.batch.template
        self._aim(self.template)  # its own host, which need not be the single-key origin's
        self.value_max_bytes = max_bytes

    def url_for(self, key: str) -> str:
        # Here `key` is the encoded, comma-joined keys of the call (encode_keys).
        return self.template.replace("{keys}", key)

    def fetch_many(self, keys: list[str], deadline: float) -> dict[str, KeyAnswer]:
        """One GET for `keys`: each key's answer. Raises OriginError when the call itself failed."""
        try:
            whole = self.fetch(encode_keys(keys), deadline)
        except NotFound:
            raise OriginError("the batch origin answered 404 to the whole call") from None
        assert isinstance(whole, OriginResponse)  # unconditional: never NotModified
        try:
            values = json.loads(whole.body)
        except (ValueError, RecursionError):  # RecursionError: nested past the parser
            raise KeyFault("the batch origin's answer is not JSON") from None
        if not isinstance(values, dict):
            raise KeyFault("the batch origin's answer is not a JSON object {key: value}")
        answers: dict[str, KeyAnswer] = {}
        for key in keys:
            if key not in values:
                answers[key] = None
                continue
            body = json.dumps(values[key], separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            if len(body) > self.value_max_bytes:
                answers[key] = OriginTooLarge(f"the value exceeds ORIGIN_MAX_BYTES={self.value_max_bytes}")
            else:
                # The call's cache headers (and tags) apply to each value; its validators to none.
                answers[key] = dataclasses.replace(
                    whole, body=body, content_type="application/json", validators=Validators()
                )
        return answers


class Batch:
    """Keys gathered for one call. The first key's refresh leads it: it waits for the batch to
    fill or to go quiet, makes the call, and sets `done`; the others wait for `done`."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.url_chars = 0
        self.last_join = time.monotonic()
        self.closed = threading.Event()  # no more keys join: full, or its leader stopped waiting
        self.done = threading.Event()
        self.answers: dict[str, KeyAnswer] = {}
        self.error: BaseException | None = None  # the call's failure: every key's
        self.started_ms = 0  # the Redis clock when the breaker admitted the call

    def answer(self, key: str) -> KeyAnswer:
        """The key's answer; raises the call's failure, or the key's own (a value too large)."""
        if self.error is not None:
            raise self.error
        answer = self.answers.get(key)
        if isinstance(answer, OriginError):
            raise answer
        return answer


class BatchCollector:
    """One namespace's batch being gathered in this worker process.

    Why here, not in tasks carrying many keys: the keys that are due together arrive from many
    places (every web process's cold misses, batch reads and warm-ups), and the queue's bound and
    markers count one message per key. Gathered where the refreshes run, each key keeps its own
    message, claim, lease and fenced write, and any source of concurrent misses coalesces.

    A batch closes when it holds `max_keys` keys, when its URL would pass MAX_URL_CHARS, or when
    no key joined for `window_ms` (waiting at most WINDOW_LIMIT windows in all): a burst of due
    refreshes fills batches while a lone miss waits one window."""

    WINDOW_LIMIT = 10
    # Longest a batch waits for keys announced to be on their way (see announce).
    ANNOUNCED_LIMIT_SECONDS = 1.0

    def __init__(self, config: BatchConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._open: Batch | None = None
        self._expected: dict[str, int] = {}  # keys announced, not joined (nor given up) yet
        self._base_chars = len(config.template) - len("{keys}")

    def announce(self, keys: list[str]) -> None:
        """These keys' refreshes are starting (one message carried them): the open batch waits
        for them (ANNOUNCED_LIMIT_SECONDS at most) rather than close in a gap between them."""
        with self._lock:
            for key in keys:
                self._expected[key] = self._expected.get(key, 0) + 1

    def forget(self, key: str) -> None:
        """An announced key's refresh ended (or never joined: its claim failed)."""
        with self._lock:
            self._unexpect_locked(key)

    def _unexpect_locked(self, key: str) -> None:
        left = self._expected.pop(key, 0) - 1
        if left > 0:
            self._expected[key] = left

    def join(self, key: str) -> tuple[Batch, bool]:
        """Add `key` to the batch being gathered: (its batch, whether this caller leads it)."""
        size = len(quote(key, safe="")) + 1
        with self._lock:
            batch, leader = self._open, False
            if batch is not None and batch.keys and self._base_chars + batch.url_chars + size > MAX_URL_CHARS:
                self._close_locked(batch)
                batch = None
            if batch is None:
                batch, leader = Batch(), True
                self._open = batch
            self._unexpect_locked(key)
            batch.keys.append(key)
            batch.url_chars += size
            batch.last_join = time.monotonic()
            if len(batch.keys) >= self.config.max_keys:
                self._close_locked(batch)
        return batch, leader

    def gather(self, batch: Batch) -> list[str]:
        """The leader waits until its batch is full or quiet, closes it and returns its keys."""
        window = self.config.window_ms / 1000
        opened = time.monotonic()
        limit = opened + window * self.WINDOW_LIMIT
        announced_limit = opened + max(window * self.WINDOW_LIMIT, self.ANNOUNCED_LIMIT_SECONDS)
        while not batch.closed.is_set():
            now = time.monotonic()
            if self._expected and now < announced_limit:
                quiet_until = now + min(window, announced_limit - now) if window else announced_limit
            else:
                quiet_until = min(batch.last_join + window, limit)
            if now >= quiet_until:
                break
            batch.closed.wait(quiet_until - now)
        with self._lock:
            self._close_locked(batch)
            return list(batch.keys)

    def _close_locked(self, batch: Batch) -> None:
        batch.closed.set()
        if self._open is batch:
            self._open = None
