"""NearCache: byte-bounded LRU, expiry at the XFetch moment in host time, the read/invalidate race guard."""

from __future__ import annotations

import gc
import random
import threading
import tracemalloc
from dataclasses import dataclass

import pytest
from prometheus_client import REGISTRY

from shared.nearcache import ENTRY_OVERHEAD_BYTES, NearCache, hit_until_ms
from shared.protocol import LeaseState
from shared.replies import ReadResult
from shared.xfetch import Decision, decide


@dataclass(frozen=True)
class Entry:
    value: bytes
    negative: bool = False


class FakeClock:
    """Host monotonic clock in ms, moved by the test instead of by sleeping."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def near_cache_count(result: str) -> float:
    return REGISTRY.get_sample_value("herdless_near_cache_total", {"result": result}) or 0.0


def near_cache_bytes_gauge() -> float:
    return REGISTRY.get_sample_value("herdless_near_cache_bytes") or 0.0


def live_cache(max_bytes: int = 1 << 20, clock: FakeClock | None = None, **kwargs: int) -> NearCache[Entry]:
    nc: NearCache[Entry] = NearCache(max_bytes, clock=clock or FakeClock(), **kwargs)
    nc.resume()
    return nc


def put_fresh(nc: NearCache[Entry], key: str, value: bytes, ns: str = "t") -> bool:
    """Put as if Redis (same clock as the host) just called it HIT for another minute."""
    token = nc.begin_read(ns, key)
    return nc.put(ns, key, Entry(value), int(token.host_ms), token.host_ms + 60_000, token)


def test_total_bytes_never_exceed_the_budget_and_least_recently_used_goes_first() -> None:
    budget = 20_000
    nc = live_cache(budget)
    rng = random.Random(7)
    for i in range(2_000):
        put_fresh(nc, f"k{i}", b"x" * rng.randint(0, 3_000))
        assert nc.bytes <= budget
        assert near_cache_bytes_gauge() == nc.bytes
        if i % 3 == 0:
            nc.get("t", f"k{i - 1}")
    assert 0 < len(nc) < 2_000

    small = live_cache(3 * (ENTRY_OVERHEAD_BYTES + 100 + len("a1") + len("t")))
    for key in ("a1", "a2", "a3"):
        assert put_fresh(small, key, b"v" * 100)
    assert small.get("t", "a1") is not None  # a1 is now the most recent; a2 the oldest
    assert put_fresh(small, "a4", b"v" * 100)
    assert small.get("t", "a2") is None
    assert all(small.get("t", k) is not None for k in ("a1", "a3", "a4"))


def test_an_entry_larger_than_the_budget_is_never_stored() -> None:
    nc = live_cache(10_000)
    assert put_fresh(nc, "small", b"s" * 100)
    assert not put_fresh(nc, "huge", b"h" * 10_000)
    assert nc.get("t", "huge") is None
    assert nc.get("t", "small") is not None  # refusing the huge one evicted nothing
    assert nc.bytes <= 10_000


def test_entry_expires_at_its_xfetch_moment_in_host_time_when_redis_runs_ahead() -> None:
    clock = FakeClock(1_000.0)
    nc = live_cache(clock=clock, margin_ms=50)
    # Redis's clock is 10 s ahead of the host's monotonic clock.
    token = nc.begin_read("t", "k")
    clock.now += 3  # the round trip
    redis_now = int(token.host_ms) + 10_000 + 1
    soft, d, beta, u = redis_now + 9_000, 1_000.0, 1.0, 0.5
    early = hit_until_ms(soft, d, beta, u, None)  # soft - 693.1 ms (no TTL stored: unbounded)
    assert nc.put("t", "k", Entry(b"v"), redis_now, early, token)

    deadline_host = early - (redis_now - token.host_ms) - 50
    clock.now = deadline_host - 1
    hit = nc.get("t", "k")
    assert hit is not None
    assert hit.redis_now_ms == int(clock.now + 10_001)  # host now + measured offset
    misses = near_cache_count("miss")
    clock.now = deadline_host
    assert nc.get("t", "k") is None
    assert near_cache_count("miss") == misses + 1
    assert len(nc) == 0  # dropped on get


@pytest.mark.parametrize("readers", [1, 2])
def test_past_its_xfetch_moment_a_rarely_read_key_is_served_until_expiry_and_a_hot_one_goes_to_redis(
    readers: int,
) -> None:
    # Fresh from 0 to 5 000 ms, XFetch moment at 4 700 (a 300 ms head start). A key read less than
    # once per head start (summed over `readers` processes) keeps its value until expiry: no early
    # refresh; one read more often than that goes back to Redis at its moment, which refreshes early.
    def cache_with_reads(every_ms: float) -> tuple[NearCache[Entry], FakeClock]:
        clock = FakeClock(0.0)
        nc = live_cache(clock=clock, margin_ms=0, readers=readers)
        token = nc.begin_read("t", "k")
        assert nc.put("t", "k", Entry(b"v"), 0, 4_700.0, token, fresh_until_ms=5_000.0)
        while clock.now + every_ms < 4_700.0:
            clock.now += every_ms
            assert nc.get("t", "k") is not None
        return nc, clock

    # Per process: one read a second (rarely, for 1 or 2 processes: 0.3 or 0.6 reads per head start).
    nc, clock = cache_with_reads(1_000.0)
    clock.now = 4_800.0
    assert nc.get("t", "k") is not None
    clock.now = 5_000.0  # its expiry: a read that must go to Redis (STALE there)
    assert nc.get("t", "k") is None

    # Per process: one read every 100 ms (3 or 6 per head start): hot, back to Redis at the moment.
    nc, clock = cache_with_reads(100.0)
    clock.now = 4_700.0
    assert nc.get("t", "k") is None

    # Near the edge, 2 processes reading once every 500 ms each: 1.2 reads per head start, hot.
    if readers == 2:
        nc, clock = cache_with_reads(500.0)
        clock.now = 4_700.0
        assert nc.get("t", "k") is None


def test_offset_is_measured_from_before_the_read_so_slow_replies_expire_early_not_late() -> None:
    clock = FakeClock(0.0)
    nc = live_cache(clock=clock, margin_ms=0)
    token = nc.begin_read("t", "k")
    clock.now = 500.0  # a 500 ms round trip; Redis (same clock) ran the read at 250
    assert nc.put("t", "k", Entry(b"v"), 250, 1_000.0, token)
    clock.now = 749.0
    assert nc.get("t", "k") is not None
    clock.now = 750.0  # Redis's true clock is at 750 here: 250 ms short of its moment, never past it
    assert nc.get("t", "k") is None


def test_hit_until_agrees_with_the_read_decision() -> None:
    rng = random.Random(11)
    for _ in range(2_000):
        soft = rng.randint(10_000, 100_000)
        d = rng.choice([0.0, rng.uniform(1, 5_000)])
        beta = rng.choice([0.0, 0.5, 1.0, 3.0])
        u = rng.choice([1.0, 1e-300, rng.random() or 1.0])
        ttl = rng.choice([None, rng.randint(0, 20_000)])
        moment = hit_until_ms(soft, d, beta, u, ttl)
        before, after = int(moment) - 1, int(moment) + 1
        if before >= 0:
            assert decide(before, soft, d, beta, u, True, ttl) is Decision.HIT
        assert decide(after, soft, d, beta, u, True, ttl) is not Decision.HIT


def test_negative_entry_is_served_until_its_soft_expiry() -> None:
    clock = FakeClock(0.0)
    nc = live_cache(clock=clock, margin_ms=0)
    token = nc.begin_read("t", "gone")
    soft = 10_000
    assert nc.put("t", "gone", Entry(b"", negative=True), 0, hit_until_ms(soft, 0.0, 1.0, 0.3, None), token)
    clock.now = soft - 1
    hit = nc.get("t", "gone")
    assert hit is not None and hit.entry.negative
    clock.now = soft
    assert nc.get("t", "gone") is None


def test_put_is_refused_when_the_key_was_invalidated_during_the_read() -> None:
    nc = live_cache()
    token = nc.begin_read("t", "k")
    nc.invalidate("t", "k")  # a write of B was published while we were reading A
    assert not nc.put("t", "k", Entry(b"A"), int(token.host_ms), token.host_ms + 60_000, token)
    assert nc.get("t", "k") is None
    assert put_fresh(nc, "k", b"B")  # a read begun after the invalidation may be kept


def test_invalidations_of_other_keys_do_not_refuse_a_put() -> None:
    nc = live_cache(invalidation_memory=100)
    token = nc.begin_read("t", "k")
    for i in range(50):
        nc.invalidate("t", f"other{i}")
    assert nc.put("t", "k", Entry(b"A"), int(token.host_ms), token.host_ms + 60_000, token)


def test_forgotten_invalidations_make_older_reads_refused_conservatively() -> None:
    nc = live_cache(invalidation_memory=4)
    token = nc.begin_read("t", "k")
    nc.invalidate("t", "k")
    for i in range(5):  # pushes k's record out of the bounded memory
        nc.invalidate("t", f"other{i}")
    assert not nc.put("t", "k", Entry(b"A"), int(token.host_ms), token.host_ms + 60_000, token)
    assert put_fresh(nc, "k", b"B")


@pytest.mark.parametrize("interruption", ["clear", "suspend_resume"])
def test_put_is_refused_when_the_cache_was_flushed_during_the_read(interruption: str) -> None:
    nc = live_cache()
    token = nc.begin_read("t", "k")
    if interruption == "clear":
        nc.clear()
    else:
        nc.suspend()
        nc.resume()
    assert not nc.put("t", "k", Entry(b"A"), int(token.host_ms), token.host_ms + 60_000, token)


def test_a_suspended_cache_is_bypassed_and_counted_but_holds_its_values_for_an_outage_until_resumed() -> None:
    nc = live_cache()
    assert put_fresh(nc, "k", b"v")
    nc.suspend()
    assert not nc.enabled and len(nc) == 1
    bypassed = near_cache_count("bypassed")
    assert nc.get("t", "k") is None
    assert near_cache_count("bypassed") == bypassed + 1
    assert not put_fresh(nc, "k", b"v")
    held = nc.get_stale("t", "k")  # what a process answers while Redis is unreachable
    assert held is not None and held.entry.value == b"v"
    nc.resume()  # invalidations may have been missed meanwhile: nothing held survives
    assert len(nc) == 0 and nc.bytes == 0 and nc.get_stale("t", "k") is None
    assert put_fresh(nc, "k", b"v")
    assert nc.get("t", "k") is not None


def test_held_values_are_dropped_once_a_read_begun_after_the_suspension_reaches_redis() -> None:
    nc = live_cache()
    assert put_fresh(nc, "k", b"v")
    before = nc.begin_read("t", "other")  # in flight when the subscription was lost
    nc.suspend()
    nc.redis_answered(before)  # its answer says nothing about the time since
    assert nc.get_stale("t", "k") is not None
    after = nc.begin_read("t", "other")
    nc.redis_answered(after)  # Redis is up while this process cannot hear invalidations
    assert nc.get_stale("t", "k") is None and len(nc) == 0


def test_an_invalidation_before_the_suspension_removes_the_value_from_what_is_held() -> None:
    nc = live_cache()
    assert put_fresh(nc, "purged", b"old") and put_fresh(nc, "kept", b"v")
    nc.invalidate("t", "purged")
    nc.suspend()
    assert nc.get_stale("t", "purged") is None
    assert nc.get_stale("t", "kept") is not None


def test_a_value_is_kept_past_its_hit_moment_until_its_stale_if_error_bound() -> None:
    clock = FakeClock(0.0)
    nc = live_cache(clock=clock, margin_ms=0)
    token = nc.begin_read("t", "k")
    assert nc.put("t", "k", Entry(b"v"), 0, 1_000.0, token, keep_until_ms=5_000.0)
    clock.now = 999.0
    assert nc.get("t", "k") is not None
    clock.now = 1_000.0
    assert nc.get("t", "k") is None  # no longer a HIT: reads go to Redis
    assert len(nc) == 1  # but it is kept for an outage
    clock.now = 4_999.0
    stale = nc.get_stale("t", "k")
    assert stale is not None and stale.redis_now_ms == 4_999
    clock.now = 5_000.0
    assert nc.get_stale("t", "k") is None and len(nc) == 0
    # A value Redis did not call HIT (early_ms in the past) is kept for get_stale only.
    token = nc.begin_read("t", "stale")
    assert nc.put("t", "stale", Entry(b"s"), 5_000, 0.0, token, keep_until_ms=9_000.0)
    assert nc.get("t", "stale") is None and nc.get_stale("t", "stale") is not None
    token = nc.begin_read("t", "gone")
    assert not nc.put("t", "gone", Entry(b"g"), 5_000, 0.0, token, keep_until_ms=4_000.0)


def test_the_entry_count_is_bounded_whatever_the_sizes() -> None:
    nc = live_cache(1 << 30, max_entries=100)
    for i in range(1_000):
        assert put_fresh(nc, f"k{i}", b"")
        assert len(nc) <= 100
    assert nc.get("t", "k999") is not None and nc.get("t", "k0") is None


def test_a_new_cache_bypasses_until_its_subscription_resumes_it() -> None:
    nc: NearCache[Entry] = NearCache(1 << 20)
    assert not nc.enabled
    assert not put_fresh(nc, "k", b"v")


def test_invalidate_drops_the_entry_and_counts_it() -> None:
    nc = live_cache()
    assert put_fresh(nc, "k", b"v")
    before = near_cache_count("invalidated")
    assert nc.invalidate("t", "k")
    assert nc.get("t", "k") is None
    assert near_cache_count("invalidated") == before + 1
    assert not nc.invalidate("t", "k")  # nothing left to drop: not counted again
    assert near_cache_count("invalidated") == before + 1


def test_a_slower_older_read_does_not_replace_a_newer_one() -> None:
    nc = live_cache()
    old = nc.begin_read("t", "k")
    new = nc.begin_read("t", "k")
    assert nc.put("t", "k", Entry(b"new"), 2_000, 60_000, new)
    assert not nc.put("t", "k", Entry(b"old"), 1_990, 60_000, old)
    hit = nc.get("t", "k")
    assert hit is not None and hit.entry.value == b"new"


def test_concurrent_puts_gets_and_invalidations_keep_the_byte_account_exact() -> None:
    budget = 50_000
    nc = live_cache(budget)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(2_000):
                key = f"k{rng.randint(0, 200)}"
                op = rng.random()
                if op < 0.5:
                    put_fresh(nc, key, b"x" * rng.randint(0, 2_000))
                elif op < 0.9:
                    nc.get("t", key)
                else:
                    nc.invalidate("t", key)
                assert nc.bytes <= budget
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert nc.bytes <= budget
    assert nc.bytes == sum(s.size for s in nc._slots.values())


def _read_result(i: int, rng: random.Random) -> ReadResult:
    """A ReadResult as store.read decodes one: new objects for every field, as from a reply."""
    return ReadResult(
        decision=Decision.HIT,
        won_lease=False,
        now_ms=1_700_000_000_000 + i,
        value=rng.randbytes(rng.randint(0, 2_000)),
        content_type=b"application/json".decode(),
        etag=('"' + rng.randbytes(12).hex() + '"').encode().decode(),
        at_ms=1_699_999_990_000 + i,
        soft_ms=1_700_000_060_000 + i,
        delta_ms=float(rng.randint(1, 500)),
        negative=False,
        lease_state=LeaseState.FREE,
        lease_pttl_ms=-2,
        u=rng.random() or 1.0,
        stale_ms=30_000 + i,
    )


def test_a_filled_near_cache_uses_its_budget_and_no_more() -> None:
    # Before, an entry was charged a flat 256 bytes beyond its value and len(key) characters:
    # a 16 MiB budget held 54 MB. Measured with tracemalloc: everything the cache keeps alive.
    budget = 4 * 1024 * 1024
    rng = random.Random(5)
    nc: NearCache[ReadResult] = NearCache(budget)
    nc.resume()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(12_000):
            # Keys of every length a client may send, some of them beyond ASCII.
            key = f"user:{i}:" + rng.choice(["", "x" * rng.randint(1, 400), "é" * rng.randint(1, 100), "键" * 50])
            token = nc.begin_read("demo", key)
            entry = _read_result(i, rng)
            nc.put("demo", key, entry, int(token.host_ms), token.host_ms + 600_000, token)
            del entry
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert nc.bytes <= budget
    assert len(nc) < 12_000  # the budget was reached: entries were evicted
    assert used <= 1.2 * budget, f"{used / budget:.2f}x the budget for {len(nc)} entries"
    assert used >= 0.7 * budget, f"only {used / budget:.2f}x the budget: the overhead is overcharged"


def test_while_a_refresh_is_under_way_the_value_is_answered_pending_until_the_bound_or_its_publish() -> None:
    clock = FakeClock(0.0)
    nc = live_cache(clock=clock, margin_ms=0)
    # Redis answered STALE at 0 (its HIT moment long past), another refresh holding the lease 800 ms.
    token = nc.begin_read("t", "k")
    assert nc.put("t", "k", Entry(b"old"), 0, 0.0, token, keep_until_ms=60_000.0, pending_until_ms=800.0)
    clock.now = 10.0
    hit = nc.get("t", "k")
    assert hit is not None and hit.pending and hit.entry.value == b"old"
    clock.now = 800.0  # the lease's end: the refresh may be lost, Redis must be asked again
    assert nc.get("t", "k") is None
    assert nc.get_stale("t", "k") is not None  # still held for an outage

    token = nc.begin_read("t", "k")
    assert nc.put("t", "k", Entry(b"old"), 800, 0.0, token, keep_until_ms=60_000.0, pending_until_ms=5_000.0)
    assert nc.get("t", "k") is not None
    nc.invalidate("t", "k")  # the refresh's publish (a write, a failure) or a purge
    assert nc.get("t", "k") is None
    # A HIT is a HIT, never pending; a pending bound never outlives what is kept for an outage.
    token = nc.begin_read("t", "h")
    assert nc.put("t", "h", Entry(b"v"), 800, 2_000.0, token, keep_until_ms=1_500.0, pending_until_ms=9_000.0)
    hit = nc.get("t", "h")
    assert hit is not None and not hit.pending
    clock.now = 2_000.0
    assert nc.get("t", "h") is None
