"""Several scripts in one round trip: a pipeline without a transaction, each script on its own keys.

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

from redis.exceptions import NoScriptError


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
        # execute_command, not pipe.evalsha: a cluster pipeline refuses the latter by name (it
        # cannot load scripts on NOSCRIPT), but routes EVALSHA by its keys.
        pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
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
