"""Python callable origins used by the tests (namespaces may name `package.module:function`)."""

from __future__ import annotations

import time

from shared.origin import NOT_MODIFIED, KeyFault, NotFound, OriginValue

# Larger than the default ORIGIN_MAX_BYTES (1 MiB).
OVERSIZED_BYTES = 2 * 1024 * 1024


def compute(key: str) -> dict[str, object]:
    if key.startswith("missing-"):
        raise NotFound(key)
    if key.startswith("boom-"):
        raise RuntimeError("the origin callable failed")
    return {"key": key, "computed_at": time.time()}


# Versions of the values `versioned` serves: a worker process that imports this module keeps
# them as they are (the tests only see what the origin does through herdless).
VERSION = 1


def versioned(key: str, validator: str | None = None) -> object:
    """A callable origin that revalidates: it gives each value an ETag and answers NOT_MODIFIED
    when herdless passes that ETag back."""
    etag = f'"v{VERSION}"'
    if validator == etag:
        return NOT_MODIFIED
    return OriginValue({"key": key, "version": VERSION}, etag=etag)


def typed(key: str) -> object:
    """Answers of every type a callable may return, chosen by the key's prefix."""
    kind = key.split("-", 1)[0]
    if kind == "bytes":
        return b"\x00raw bytes\xff"
    if kind == "str":
        return f"text for {key} \u2713"
    if kind == "nonjson":
        return {"key": key, "when": object()}  # json.dumps refuses it
    if kind == "oversized":
        return "x" * OVERSIZED_BYTES
    if kind == "boom":
        raise RuntimeError(f"the origin callable failed for {key}")
    if kind == "slow":
        time.sleep(2)  # past the origin_timeout_seconds of the namespaces that ask for it
        return {"key": key}
    if kind == "lookup":
        raise KeyError(key)  # any LookupError means "no such key"
    return {"key": key}


# What a database driver's exception may say: its DSN, password and all.
LEAKY_DSN = "postgresql://app:Db-Pa55word-9c1e@db.internal:5432/app"


def leaky(key: str) -> object:
    """A callable whose failure names a secret (as psycopg's connection errors name their DSN)."""
    if key.startswith("fail-"):
        raise ConnectionError(f'connection to server failed: could not connect to "{LEAKY_DSN}"')
    return {"key": key}


def picky(key: str) -> object:
    """A callable that refuses some keys itself (KeyFault: the key's problem, not counted by
    the breaker) and fails on others as a broken backend would (counted)."""
    if key.startswith("malformed-"):
        raise KeyFault(f"not an id: {key}")
    if key.startswith("down-"):
        raise ConnectionError("the database is down")
    return {"key": key}


def tagged(key: str) -> object:
    """A value with its tags, as a callable origin gives them (one bad tag, dropped)."""
    return OriginValue({"key": key}, tags=[f"product:{key}", "category:7", "", 42])
