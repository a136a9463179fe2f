"""One Lua script run over many keys in one pipelined round trip per Redis node (a batch read's)."""

from __future__ import annotations

from typing import Any

import redis


def evalsha_each(client: Any, script: Any, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
    """EVALSHA `script` once per (keys, args) call, in one pipeline without a transaction: one
    round trip to each Redis node the calls' keys live on (a cluster pipeline groups them by
    node). The script is not loaded first, as `CacheStore._evalsha_many` does for a warm-up:
    that would be a round trip of its own on every batch read. Only the calls a node refused
    with NOSCRIPT (it restarted, or never saw the script) are run again after a load: the other
    calls ran, and a READ run twice would take a lease the first run already took."""
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        for i in todo:
            keys, args = calls[i]
            # execute_command, not pipe.evalsha: a cluster pipeline refuses the latter by name.
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        results = pipe.execute(raise_on_error=False)
        missing = []
        for i, result in zip(todo, results, strict=True):
            if isinstance(result, redis.exceptions.NoScriptError) and attempt == 1:
                missing.append(i)
            elif isinstance(result, Exception):
                raise result
            else:
                replies[i] = result
        if not missing:
            break
        script.sha = client.script_load(script.script)
        todo = missing
    return replies
