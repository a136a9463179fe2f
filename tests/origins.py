"""Python callable origins used by the tests (namespaces may name `package.module:function`)."""

from __future__ import annotations

import time

from shared.origin import NotFound


def compute(key: str) -> dict[str, object]:
    if key.startswith("missing-"):
        raise NotFound(key)
    if key.startswith("boom-"):
        raise RuntimeError("the origin callable failed")
    return {"key": key, "computed_at": time.time()}
