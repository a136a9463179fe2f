"""The web process's bound on reads in flight: refuses past it, adapts it to the cold waits (pure, no I/O)."""

from __future__ import annotations

from shared.admission import FLOOR, QUIET_SECONDS, WINDOW_SECONDS, Admission


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


HELD: list[object] = []  # slots a test leaves held (a context left open)


def fill(admission: Admission, n: int) -> list[bool]:
    """Enter n slots at once; returns which were admitted (and leaves them held)."""
    got = []
    for _ in range(n):
        cm = admission.slot()
        HELD.append(cm)
        got.append(cm.__enter__())
    return got


def windows(admission: Admission, clock: Clock, wait_s: float, count: int) -> None:
    for _ in range(count):
        for _ in range(20):
            admission.observe_wait(wait_s)
        clock.now += WINDOW_SECONDS


def test_reads_past_the_bound_are_refused_and_a_slot_is_given_back_on_exit() -> None:
    admission = Admission(3)
    assert fill(admission, 5) == [True, True, True, False, False]
    admission = Admission(1)
    with admission.slot() as first:
        with admission.slot() as second:
            assert first and not second
    with admission.slot() as again:
        assert again and admission.in_flight == 1
    assert admission.in_flight == 0


def test_no_ceiling_admits_everything() -> None:
    assert all(fill(Admission(None), 10_000))


def test_cold_waits_past_the_target_shrink_the_bound_and_short_ones_under_a_binding_bound_grow_it() -> None:
    clock = Clock()
    admission = Admission(256, target_wait_s=1.0, clock=clock)
    windows(admission, clock, 0.1, 3)  # fast waits with the bound not binding: nothing changes
    assert admission.limit == 256
    windows(admission, clock, 4.0, 20)  # the refresh tier is far behind: shrinks, down to the floor at most
    assert FLOOR <= admission.limit < 256 / 4
    shrunk = admission.limit
    fill(admission, int(shrunk))  # the bound binds while the waits are short again: it grows back
    windows(admission, clock, 0.1, 3)
    assert admission.limit > shrunk


def test_an_origin_that_is_simply_slow_does_not_shrink_the_bound() -> None:
    # Every cold wait takes the origin's 3 s, queue or not: twice that is the target, not 1 s.
    clock = Clock()
    admission = Admission(256, target_wait_s=1.0, clock=clock)
    windows(admission, clock, 3.0, 10)
    assert admission.limit == 256


def test_a_bound_shrunk_by_slow_waits_is_back_at_its_ceiling_once_no_cold_wait_ended_for_a_while() -> None:
    clock = Clock()
    admission = Admission(64, target_wait_s=1.0, clock=clock)
    windows(admission, clock, 0.1, 1)
    windows(admission, clock, 4.0, 20)
    assert admission.limit == FLOOR
    assert fill(admission, FLOOR + 1)[-1] is False  # still adapting: the excess is refused
    clock.now += QUIET_SECONDS + 0.1  # the slow waits were a while ago
    assert all(fill(admission, 64 - FLOOR - 1)) and admission.limit == 64


def test_the_shrunk_bound_the_front_door_checks_for_cold_waiters_is_forgotten_once_quiet() -> None:
    # web/front.py refuses joiners of a cold wait while the bound is shrunk: a bound shrunk by an
    # overload that ended must not refuse a later herd (no read had asked for a slot meanwhile).
    clock = Clock()
    admission = Admission(64, target_wait_s=1.0, clock=clock)
    assert admission.shrunk_limit() is None
    windows(admission, clock, 0.1, 1)
    windows(admission, clock, 4.0, 20)
    assert admission.shrunk_limit() == FLOOR
    clock.now += QUIET_SECONDS + 0.1
    assert admission.shrunk_limit() is None
    assert admission.limit == 64
    assert Admission(None).shrunk_limit() is None
