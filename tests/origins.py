"""Python callable origins used by the tests (namespaces may name `package.module:function`)."""

from __future__ import annotations

import time

from shared.origin import NOT_MODIFIED, NotFound, OriginValue


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
