"""Random interleavings of a key's life against a real Redis, checking the engine's invariants
after every step: reads, refreshes that start, pause past their lease, fail, write or are
answered 304 (revalidation), are handed back to the queue by a stopping worker, purges and soft
purges, queue expiry and redelivery.

`make test` runs a bounded number of examples. The long run (10 000+ steps):

    HERDLESS_STATE_MACHINE_EXAMPLES=400 HERDLESS_STATE_MACHINE_STEPS=50 .venv/bin/pytest tests/test_state_machine.py
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shared.freshness import fixed_lifetimes
from shared.keys import EntryKeys
from shared.namespaces import build_namespace
from shared.origin import Validators
from shared.settings import Settings
from shared.store import CacheStore, Fence, make_redis, new_token
from shared.xfetch import Decision
from tests.stack import RedisServer

EXAMPLES = int(os.environ.get("HERDLESS_STATE_MACHINE_EXAMPLES", "300"))
STEPS = int(os.environ.get("HERDLESS_STATE_MACHINE_STEPS", "40"))
KEYS = ("a", "b")


@dataclass
class Task:
    """A refresh task handed to the queue by the read that won the lease."""

    key: str
    token: str


@dataclass
class Run:
    """A refresh run: claimed, origin call started at `started` (Redis ms), and how many hard
    and soft purges of its key had happened when it was claimed."""

    key: str
    token: str
    run_token: str
    started: int
    value: bytes
    hard_epoch: int
    soft_epoch: int
    acks: bool  # False for a redelivered copy's run: the copy left in the queue is that message
    # The entry stored when the run began (its `at` and bytes): what a conditional call would
    # send the validator of, and all a 304 may keep.
    validated_at: int | None = None
    validated_value: bytes | None = None


@pytest.fixture(scope="module")
def machine_redis(tmp_path_factory: pytest.TempPathFactory) -> RedisServer:
    server = RedisServer(tmp_path_factory.mktemp("state-machine-redis")).start()
    yield server  # type: ignore[misc]
    server.stop()


def test_the_protocol_keeps_its_invariants_under_random_interleavings(machine_redis: RedisServer) -> None:
    cfg = Settings(redis_url=machine_redis.url, lease_ttl_seconds=5, cache_ttl_seconds=60, stale_ttl_seconds=60)
    store = CacheStore(make_redis(cfg), cfg)
    ns = build_namespace("sm", {"origin": "http://127.0.0.1:9/{key}", "strategy": "xfetch"}, cfg)

    class KeyLife(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            store.redis.flushall()
            self.counter = 0
            self.tasks: list[Task] = []  # in the queue (or redelivered copies of them)
            self.runs: list[Run] = []  # claimed and running
            self.dead_runs: list[Run] = []  # handed back to the queue, their leases not yet run out
            # Per key: start time (Redis ms) of the origin call of the value now stored, the
            # moments of the last hard and soft purge (as the scripts recorded them), and the
            # start time of every value ever written.
            self.stored_at: dict[str, int | None] = dict.fromkeys(KEYS)
            self.hard_purged_at: dict[str, int] = dict.fromkeys(KEYS, 0)
            self.soft_purged_at: dict[str, int] = dict.fromkeys(KEYS, 0)
            self.started_of: dict[bytes, int] = {}
            # Purges counted per key; a value remembers the counts its run was claimed under.
            # (Milliseconds cannot order a purge and a claim made in the same millisecond.)
            self.hard_epoch: dict[str, int] = dict.fromkeys(KEYS, 0)
            self.soft_epoch: dict[str, int] = dict.fromkeys(KEYS, 0)
            self.epochs_of: dict[bytes, tuple[int, int]] = {}
            self.live_runs: dict[str, set[str]] = {key: set() for key in KEYS}
            self.last_started = 0

        # -- the web side ---------------------------------------------------------------
        @rule(key=st.sampled_from(KEYS))
        def read(self, key: str) -> None:
            token = new_token()
            r = store.read(ns, key, token)
            if r.value is not None and r.decision is not Decision.MISS:
                hard, soft = self.epochs_of[r.value]
                # Nothing from before a hard purge is ever served after it.
                assert hard == self.hard_epoch[key], (key, r.value)
                # A value from before a soft purge is never served as fresh.
                if soft < self.soft_epoch[key]:
                    assert r.decision is Decision.STALE, (key, r.decision)
            if r.won_lease:
                self.tasks.append(Task(key, token))

        @rule(key=st.sampled_from(KEYS), outlived=st.booleans())
        def hard_purge(self, key: str, outlived: bool) -> None:
            store.purge(ns, key)
            # The purge's own moment on the Redis clock, as the write script will compare it.
            tombstone = EntryKeys.of(ns.name, key).tombstone
            self.hard_purged_at[key] = int(store.redis.get(tombstone))
            self.hard_epoch[key] += 1
            self.stored_at[key] = None
            if outlived:
                # A refresh may run longer than any timer: no purge may depend on its tombstone.
                store.redis.delete(tombstone)

        @rule(key=st.sampled_from(KEYS))
        def soft_purge(self, key: str) -> None:
            if store.soft_purge(ns, key):
                self.soft_purged_at[key] = int(store.redis.hget(EntryKeys.of(ns.name, key).entry, "sp"))
                self.soft_epoch[key] += 1

        # -- the queue ------------------------------------------------------------------
        @precondition(lambda self: self.tasks)
        @rule(i=st.integers(0, 7))
        def a_task_expires_in_the_queue(self, i: int) -> None:
            task = self.tasks.pop(i % len(self.tasks))
            store.finish(ns, task.key, task.token)

        @precondition(lambda self: self.tasks)
        @rule(i=st.integers(0, 7), redelivered=st.booleans())
        def a_task_starts(self, i: int, redelivered: bool) -> None:
            # A redelivered copy leaves the task where it was: the same message runs again later.
            task = self.tasks[i % len(self.tasks)] if redelivered else self.tasks.pop(i % len(self.tasks))
            holder = store.lease_holder(ns, task.key)
            run_token = store.claim(ns, task.key, task.token)
            if run_token is None:
                return
            # Never two refreshes of one key at once: a claim succeeds only if no live run
            # holds the lease.
            assert holder not in self.live_runs[task.key], (holder, self.live_runs[task.key])
            self.live_runs[task.key].add(run_token)
            self.counter += 1
            value = f"{task.key}-{self.counter}".encode()
            # The origin call starts after the claim, and so after every purge and every earlier
            # call: wait out the millisecond they may share, so that no outcome depends on how
            # fast this machine runs the steps (Hypothesis replays examples and needs them equal).
            floor = max(self.last_started, self.hard_purged_at[task.key], self.soft_purged_at[task.key])
            started = store.now_ms()
            while started <= floor:
                started = store.now_ms()
            self.last_started = started
            at, stored_value = store.redis.hmget(EntryKeys.of(ns.name, task.key).entry, "at", "v")
            self.runs.append(
                Run(
                    task.key,
                    task.token,
                    run_token,
                    started,
                    value,
                    self.hard_epoch[task.key],
                    self.soft_epoch[task.key],
                    acks=not redelivered,
                    validated_at=None if at is None else int(at),
                    validated_value=stored_value,
                )
            )

        # -- a running refresh ------------------------------------------------------------
        @precondition(lambda self: self.runs)
        @rule(i=st.integers(0, 7))
        def a_run_pauses_past_its_lease(self, i: int) -> None:
            run = self.runs[i % len(self.runs)]
            if store.lease_holder(ns, run.key) == run.run_token:
                store.redis.delete(EntryKeys.of(ns.name, run.key).lease)  # it ran out meanwhile
            self.live_runs[run.key].discard(run.run_token)

        def acknowledged(self, run: Run) -> None:
            if run.acks:
                store.finish(ns, run.key, run.token)

        @precondition(lambda self: self.runs)
        @rule(i=st.integers(0, 7), lease_ran_out=st.booleans())
        def a_stopping_worker_hands_a_run_back_to_the_queue(self, i: int, lease_ran_out: bool) -> None:
            # The run dies unfinished; its message goes back to the queue (reject_on_worker_lost, or
            # restored when the broker connection closes) and the worker marks the key queued.
            run = self.runs.pop(i % len(self.runs))
            store.mark_queued(ns, run.key, run.token)
            self.dead_runs.append(run)  # its lease lives on until it runs out
            if lease_ran_out:
                self.a_dead_runs_lease_runs_out(len(self.dead_runs) - 1)
            if not any(t.token == run.token for t in self.tasks):
                self.tasks.append(Task(run.key, run.token))

        @precondition(lambda self: self.dead_runs)
        @rule(i=st.integers(0, 7))
        def a_dead_runs_lease_runs_out(self, i: int) -> None:
            run = self.dead_runs.pop(i % len(self.dead_runs))
            if store.lease_holder(ns, run.key) == run.run_token:
                store.redis.delete(EntryKeys.of(ns.name, run.key).lease)
            self.live_runs[run.key].discard(run.run_token)

        @precondition(lambda self: self.runs)
        @rule(i=st.integers(0, 7))
        def a_run_writes(self, i: int) -> None:
            run = self.runs.pop(i % len(self.runs))
            self.live_runs[run.key].discard(run.run_token)
            before = self.stored_at[run.key]
            result = store.fenced_write(
                ns,
                run.key,
                Fence(run.run_token, run.started, run.started),
                value=run.value,
                content_type="text/plain",
            )
            if result.written:
                # Never a value older than the stored one, nor one from before a purge.
                assert before is None or run.started > before
                assert run.hard_epoch == self.hard_epoch[run.key], "a purged generation was written back"
                assert run.soft_epoch == self.soft_epoch[run.key], "a soft purge did not fence a refresh"
                self.stored_at[run.key] = run.started
                self.started_of[run.value] = run.started
                self.epochs_of[run.value] = (run.hard_epoch, run.soft_epoch)
            self.acknowledged(run)

        @precondition(lambda self: self.runs)
        @rule(i=st.integers(0, 7))
        def a_run_is_answered_not_modified(self, i: int) -> None:
            run = self.runs.pop(i % len(self.runs))
            self.live_runs[run.key].discard(run.run_token)
            before = self.stored_at[run.key]
            result = store.revalidate(
                ns,
                run.key,
                Fence(run.run_token, run.started, run.started),
                validated_at_ms=run.validated_at or 0,
                validators=Validators(),
                lifetimes=fixed_lifetimes(ns),
            )
            if result.written:
                # A 304 keeps the very bytes it validated, and only while they are still stored:
                # it never lengthens the life of a value that replaced them.
                assert run.validated_at is not None and before == run.validated_at, (before, run.validated_at)
                assert run.started > before
                assert run.hard_epoch == self.hard_epoch[run.key], "a purged generation was revalidated"
                assert run.soft_epoch == self.soft_epoch[run.key], "a soft purge did not fence a revalidation"
                assert store.redis.hget(EntryKeys.of(ns.name, run.key).entry, "v") == run.validated_value
                self.stored_at[run.key] = run.started
                assert run.validated_value is not None
                self.epochs_of[run.validated_value] = (run.hard_epoch, run.soft_epoch)
            self.acknowledged(run)

        @precondition(lambda self: self.runs)
        @rule(i=st.integers(0, 7))
        def a_run_fails(self, i: int) -> None:
            run = self.runs.pop(i % len(self.runs))
            self.live_runs[run.key].discard(run.run_token)
            store.record_failure(ns, run.key, run.run_token)
            self.acknowledged(run)

        # -- after every step -------------------------------------------------------------
        @invariant()
        def a_lease_is_held_by_a_live_run_a_queued_task_or_nobody(self) -> None:
            for key in KEYS:
                holder = store.lease_holder(ns, key)
                if holder is not None and "." in holder and not holder.startswith("cd:"):
                    assert holder in self.live_runs[key], (key, holder)

        @invariant()
        def at_most_one_queued_task_per_key_can_still_run(self) -> None:
            # Copies of a message restored after its run's host died may linger in the queue,
            # but only one task per key can still claim the lease; every other one stops at once.
            for key in KEYS:
                lease = store.lease_holder(ns, key)
                raw = store.redis.get(EntryKeys.of(ns.name, key).queued)
                marker = None if raw is None else raw.decode()
                claimable = {
                    t.token
                    for t in self.tasks
                    if t.key == key and (lease == t.token or (lease is None and marker in (t.token, f"r:{t.token}")))
                }
                assert len(claimable) <= 1, (key, claimable)

        @invariant()
        def the_stored_value_is_the_newest_written(self) -> None:
            for key in KEYS:
                raw = store.redis.hget(EntryKeys.of(ns.name, key).entry, "at")
                if raw is not None and self.stored_at[key] is not None:
                    assert int(raw) == self.stored_at[key]

    KeyLife.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    KeyLife.TestCase().runTest()
