"""Scripts in one pipelined round trip per Redis node: one script over many keys (a batch
read's, `evalsha_each`), or several scripts, each on its own keys (a refresh run's, `run_pipelined`).

A refresh runs scripts on keys of different hash tags one after another (the queue's registry,
the key's lease, the origin's slots), and each round trip cost the worker more CPU than the
script itself (py-spy). Scripts whose order matters but whose arguments do not depend on each
other's replies go out together: Redis runs them in the order sent, and on Redis Cluster the
pipeline sends each to the node of its keys (so each still touches one hash tag).

A pipeline cannot load a script that Redis does not know (NOSCRIPT after a restart or a
SCRIPT FLUSH): the calls that got NOSCRIPT are loaded and sent again, one by one, and only they,
so no script runs twice.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import redis
from redis.exceptions import NoScriptError


def queue_evalsha(pipe: Any, client: Any, sha: str, keys: list[str], args: list[Any]) -> None:
    """Queue one EVALSHA on `pipe` (a pipeline of `client`). execute_command, not pipe.evalsha: a
    cluster pipeline refuses the latter by name (it cannot load scripts on NOSCRIPT). On a
    Cluster the call is told its node, which the client's slot map knows: redis-py 8's cluster
    pipeline otherwise asks a node for the command's keys (COMMAND GETKEYS), a round trip per
    call (5 000 calls took 11 s on a loaded machine)."""
    node_of = getattr(client, "get_node_from_key", None)
    routed = {"target_nodes": node_of(keys[0])} if node_of is not None and keys else {}
    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args, **routed)


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
            queue_evalsha(pipe, client, script.sha, keys, args)
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


class ScriptCall(NamedTuple):
    """One script call: a registered script (client.register_script), its keys and arguments."""

    script: Any
    keys: list[str]
    args: list[Any]


def run_pipelined(client: Any, calls: list[ScriptCall]) -> list[Any]:
    """Run the calls in order in one round trip; their replies, in order. A call that failed
    has its exception as its reply (the caller decides which to raise), so the others' replies
    are never lost."""
    pipe = client.pipeline(transaction=False)
    for call in calls:
        queue_evalsha(pipe, client, call.script.sha, call.keys, call.args)
    replies = list(pipe.execute(raise_on_error=False))
    for i, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            call = calls[i]
            try:
                replies[i] = call.script(keys=call.keys, args=call.args)  # loads it, then runs it
            except Exception as exc:  # noqa: BLE001 - handed back as the call's reply, as above
                replies[i] = exc
    return replies


def raise_first_error(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
