"""The store scripts' replies, decoded by field name into what the engine halves read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from shared.freshness import Lifetimes
from shared.origin import Validators
from shared.protocol import (
    Decision,
    FailureCode,
    LeaseState,
    MarkerState,
    NoCode,
    WriteOutcome,
    lease_state_of,
    marker_state_of,
)

# The READ script's reply, field by field (shared/scripts.py documents each).
READ_FIELDS = (
    "decision",
    "won",
    "now",
    "v",
    "ct",
    "etag",
    "at",
    "soft",
    "d",
    "neg",
    "lease_state",
    "lease_pttl",
    "u",
    "st",
    "cd",
    "sie",
    "ttl",
)


def decode_int(raw: Any) -> int | None:
    return None if raw is None or raw is False else int(float(raw))


def decode_float(raw: Any) -> float | None:
    return None if raw is None or raw is False else float(raw)


def decode_text(raw: Any) -> str:
    if raw is None or raw is False:
        return ""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


@dataclass(frozen=True, slots=True)
class ReadResult:
    decision: Decision
    won_lease: bool
    now_ms: int
    value: bytes | None
    content_type: str
    etag: str
    at_ms: int | None
    soft_ms: int | None
    delta_ms: float
    negative: bool
    lease_state: str  # a LeaseState (from_reply gives the member)
    lease_pttl_ms: int
    u: float  # this value's XFetch draw (1.0 when none is stored)
    stale_ms: int | None = None  # the value's stale window, when stored with it
    # While cooling down: the code of the failure behind it (origin_error, breaker_open...)
    failure: FailureCode | NoCode = ""
    stale_if_error_ms: int | None = None  # the value's stale-if-error allowance, when stored with it
    ttl_ms: int | None = None  # the value's fresh life, when stored with it: bounds XFetch's head start

    @property
    def has_value(self) -> bool:
        return self.soft_ms is not None

    @classmethod
    def from_reply(cls, raw: list[Any]) -> ReadResult:
        f = dict(zip(READ_FIELDS, raw, strict=True))
        lease_state = LeaseState(decode_text(f["lease_state"]))
        return cls(
            decision=Decision(decode_text(f["decision"])),
            won_lease=int(f["won"]) == 1,
            now_ms=int(f["now"]),
            value=f["v"] if f["v"] not in (None, False) else None,
            content_type=decode_text(f["ct"]) or "application/octet-stream",
            etag=decode_text(f["etag"]),
            at_ms=decode_int(f["at"]),
            soft_ms=decode_int(f["soft"]),
            delta_ms=float(decode_text(f["d"]) or 0),
            negative=decode_text(f["neg"]) == "1",
            lease_state=lease_state,
            lease_pttl_ms=int(f["lease_pttl"]),
            u=float(decode_text(f["u"]) or 1.0),
            stale_ms=decode_int(f["st"]),
            failure=FailureCode.parse(decode_text(f["cd"])) if lease_state is LeaseState.COOLDOWN else "",
            stale_if_error_ms=decode_int(f["sie"]),
            ttl_ms=decode_int(f["ttl"]),
        )


@dataclass(frozen=True)
class WriteResult:
    status: WriteOutcome
    delta_ms: float
    soft_ms: int
    written_at_ms: int

    @property
    def written(self) -> bool:
        """A value (new or revalidated) is stored and fresh."""
        return self.status.stored


@dataclass(frozen=True)
class StoredValidators:
    """What a conditional refresh needs of the stored entry: which entry it is (`at_ms`), its
    origin validators and the lifetimes it was stored with (a 304 without cache headers keeps
    them)."""

    at_ms: int
    validators: Validators
    lifetimes: Lifetimes

    _FIELDS: ClassVar[tuple[str, ...]] = ("at", "oetag", "olm", "neg", "ttl", "st", "sie")

    @classmethod
    def from_fields(cls, raw: list[Any], fallback: Lifetimes) -> StoredValidators | None:
        f = dict(zip(cls._FIELDS, raw, strict=True))
        at = decode_int(f["at"])
        validators = Validators(decode_text(f["oetag"]), decode_text(f["olm"]))
        if at is None or decode_text(f["neg"]) == "1" or not validators:
            return None
        ttl, st, sie = decode_int(f["ttl"]), decode_int(f["st"]), decode_int(f["sie"])
        lifetimes = Lifetimes(
            soft_ttl_ms=fallback.soft_ttl_ms if ttl is None else ttl,
            stale_ms=fallback.stale_ms if st is None else st,
            stale_if_error_ms=fallback.stale_if_error_ms if sie is None else sie,
        )
        return cls(at, validators, lifetimes)


# The INSPECT script's reply, field by field (shared/scripts.py documents each).
INSPECT_FIELDS = (
    "now",
    "exists",
    "soft",
    "at",
    "d",
    "u",
    "neg",
    "etag",
    "size",
    "fails",
    "sp",
    "entry_pttl",
    "lease",
    "lease_pttl",
    "queued",
    "queued_pttl",
    "ttl",
    "dm",
    "dv",
)


@dataclass(frozen=True)
class EntryState:
    """What Redis holds for one key at one moment (Redis clock), read without changing it."""

    now_ms: int
    stored: bool  # the entry hash exists (a value, or a cached 404)
    soft_ms: int | None  # fresh until
    at_ms: int | None  # the origin call that produced or last revalidated the value started
    delta_ms: float  # XFetch's d: the smoothed refresh duration plus twice its mean deviation
    u: float  # the value's XFetch draw
    negative: bool
    etag: str
    size_bytes: int
    failures: int  # consecutive failed refreshes (each doubles the cooldown)
    soft_purged_at_ms: int | None
    kept_until_ms: int | None  # when Redis drops the entry (stale window and stale-if-error included)
    lease: LeaseState  # FREE, HELD (a refresh holds it) or COOLDOWN (the last refresh failed)
    lease_until_ms: int | None
    cooldown_reason: FailureCode | NoCode  # while cooling down, why the last refresh failed
    queued: MarkerState
    queued_until_ms: int | None
    ttl_ms: int | None = None  # the value's fresh life (bounds XFetch's head start)
    duration_mean_ms: float | None = None  # the smoothed refresh duration (field dm)
    duration_spread_ms: float | None = None  # its mean deviation (field dv)

    @property
    def anything_stored(self) -> bool:
        return self.stored or bool(self.lease) or bool(self.queued)

    @classmethod
    def from_reply(cls, raw: list[Any]) -> EntryState:
        f = dict(zip(INSPECT_FIELDS, raw, strict=True))
        now = int(f["now"])

        def until(pttl: Any) -> int | None:
            return now + int(pttl) if int(pttl) >= 0 else None

        lease, cooldown_reason = lease_state_of(decode_text(f["lease"]))
        queued = marker_state_of(decode_text(f["queued"]))
        return cls(
            now_ms=now,
            stored=int(f["exists"]) == 1,
            soft_ms=decode_int(f["soft"]),
            at_ms=decode_int(f["at"]),
            delta_ms=float(decode_text(f["d"]) or 0),
            u=float(decode_text(f["u"]) or 1.0),
            negative=decode_text(f["neg"]) == "1",
            etag=decode_text(f["etag"]),
            size_bytes=int(f["size"]),
            failures=decode_int(f["fails"]) or 0,
            soft_purged_at_ms=decode_int(f["sp"]),
            kept_until_ms=until(f["entry_pttl"]),
            lease=lease,
            lease_until_ms=until(f["lease_pttl"]) if lease else None,
            cooldown_reason=cooldown_reason,
            queued=queued,
            queued_until_ms=until(f["queued_pttl"]) if queued else None,
            ttl_ms=decode_int(f["ttl"]),
            duration_mean_ms=decode_float(f["dm"]),
            duration_spread_ms=decode_float(f["dv"]),
        )
