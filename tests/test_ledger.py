"""The ledger on its own: no FUSE, no disk."""

from __future__ import annotations

import logging

import pytest

from ironfs.ledger import Ledger, Limits, QuotaExceeded


def make(max_bytes: int | None = 100, **kw: int | None) -> tuple[Ledger, object]:
    ledger = Ledger()
    return ledger, ledger.add(b"b", Limits(max_bytes=max_bytes, **kw))  # type: ignore[arg-type]


def test_charge_up_to_the_limit_exactly() -> None:
    ledger, b = make(100)
    ledger.charge(b, 60)
    ledger.charge(b, 40)
    assert b.used_bytes == 100
    with pytest.raises(QuotaExceeded):
        ledger.charge(b, 1)
    assert b.used_bytes == 100  # a refusal changes nothing


def test_refund_and_shrink_always_succeed_even_over_the_limit() -> None:
    ledger, b = make(100)
    ledger.charge(b, 100)
    b.set_limits(Limits(max_bytes=10))  # a limit below usage is legal
    with pytest.raises(QuotaExceeded):
        ledger.charge(b, 1)
    ledger.refund(b, 30)
    ledger.charge(b, -20)  # a negative charge is a shrink: never refused
    assert b.used_bytes == 50


def test_none_is_no_limit_and_zero_is_a_real_zero() -> None:
    ledger, unlimited = make(None)
    ledger.charge(unlimited, 10**15)
    zero = ledger.add(b"z", Limits(max_bytes=0))
    with pytest.raises(QuotaExceeded):
        ledger.charge(zero, 1)
    ledger.charge(zero, 0, 1)  # an empty object fits in 0 bytes


def test_grace_extends_the_hard_limit() -> None:
    ledger, b = make(100, grace_bytes=20)
    ledger.charge(b, 120)
    with pytest.raises(QuotaExceeded):
        ledger.charge(b, 1)


def test_max_objects() -> None:
    ledger, b = make(None, max_objects=2)
    ledger.charge(b, 0, 2)
    with pytest.raises(QuotaExceeded) as info:
        ledger.charge(b, 0, 1)
    assert info.value.what == "objects"
    ledger.charge(b, 5, -1)  # bytes grow, objects shrink: only bytes are checked


def test_noquota_tracks_but_never_refuses() -> None:
    ledger = Ledger(enforce=False)
    b = ledger.add(b"b", Limits(max_bytes=1, max_objects=0))
    ledger.charge(b, 1000, 3)
    assert (b.used_bytes, b.objects) == (1000, 3)


def test_charge_many_is_all_or_nothing() -> None:
    ledger = Ledger()
    src = ledger.add(b"src", Limits(max_bytes=100))
    dst = ledger.add(b"dst", Limits(max_bytes=50))
    ledger.charge(src, 80)
    with pytest.raises(QuotaExceeded):
        ledger.charge_many([(src, -80, -1), (dst, 80, 1)])
    assert (src.used_bytes, dst.used_bytes) == (80, 0)
    done = ledger.charge_many([(src, -40, 0), (dst, 40, 0)])
    assert (src.used_bytes, dst.used_bytes) == (40, 40)
    ledger.refund_many(done)
    assert (src.used_bytes, dst.used_bytes) == (80, 0)


def test_charge_many_merges_changes_of_one_bucket() -> None:
    ledger, b = make(100)
    ledger.charge(b, 100)
    ledger.charge_many([(b, 50, 0), (b, -50, 0)])  # nets to zero: allowed
    assert b.used_bytes == 100


def test_soft_limit_logs_once_each_way(caplog: pytest.LogCaptureFixture) -> None:
    ledger, b = make(100)  # soft limit: 90 % of max
    assert b.soft_limit == 90
    with caplog.at_level(logging.INFO, logger="ironfs.ledger"):
        ledger.charge(b, 91)
        ledger.charge(b, 5)
        ledger.refund(b, 50)
        ledger.refund(b, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "over its soft limit" in messages[0] and "back under" in messages[1]


def test_rename_and_exchange_keep_usage_with_the_bucket() -> None:
    ledger = Ledger()
    a = ledger.add(b"a", Limits())
    c = ledger.add(b"c", Limits())
    ledger.charge(a, 7)
    ledger.rename(b"a", b"b")
    assert ledger.get(b"b") is a and ledger.get(b"a") is None and a.name == b"b"
    ledger.exchange(b"b", b"c")
    assert ledger.get(b"c") is a and ledger.get(b"b") is c
    with pytest.raises(KeyError):
        ledger.rename(b"b", b"c")


def test_usage_never_goes_negative() -> None:
    ledger, b = make(100)
    ledger.refund(b, 10, 1)  # only possible after out-of-band changes
    assert (b.used_bytes, b.objects) == (0, 0)
