"""The ledger on its own: no FUSE, no disk."""

from __future__ import annotations

import logging

import pytest

from ironfs.ledger import Ledger, Limits, QuotaExceeded
from ironfs.limitlog import RefusalLog


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


def test_account_limit_applies_across_its_buckets() -> None:
    ledger = Ledger()
    a = ledger.add(b"a", Limits(max_bytes=2 * 1024))
    b = ledger.add(b"b", Limits(max_bytes=2 * 1024))
    acct = ledger.add_account("acme", Limits(max_bytes=3 * 1024))
    ledger.assign(a, acct)
    ledger.assign(b, acct)
    ledger.charge(a, 2048)
    ledger.charge(b, 1024)
    for bucket in (a, b):
        with pytest.raises(QuotaExceeded) as info:
            ledger.charge(bucket, 1)
        assert info.value.bucket is bucket
    assert info.value.meter is acct  # b has room of its own: the account refused
    assert (acct.used_bytes, a.used_bytes, b.used_bytes) == (3072, 2048, 1024)


def test_bucket_limit_applies_inside_a_roomy_account() -> None:
    ledger = Ledger()
    a = ledger.add(b"a", Limits(max_bytes=100))
    acct = ledger.add_account("acme", Limits(max_bytes=None))
    ledger.assign(a, acct)
    with pytest.raises(QuotaExceeded) as info:
        ledger.charge(a, 101)
    assert info.value.meter is a and acct.used_bytes == 0


def test_moves_within_an_account_are_netted() -> None:
    ledger = Ledger()
    a = ledger.add(b"a", Limits(max_bytes=None))
    b = ledger.add(b"b", Limits(max_bytes=None))
    acct = ledger.add_account("acme", Limits(max_bytes=100))
    ledger.assign(a, acct)
    ledger.assign(b, acct)
    ledger.charge(a, 100)
    ledger.charge_many([(a, -100, -1), (b, 100, 1)])  # full account, but a move fits
    assert (a.used_bytes, b.used_bytes, acct.used_bytes) == (0, 100, 100)


def test_membership_changes_move_usage_at_once() -> None:
    ledger = Ledger()
    a = ledger.add(b"a", Limits(), used_bytes=70, objects=2)
    one = ledger.add_account("one", Limits(max_bytes=10))
    two = ledger.add_account("two", Limits())
    ledger.assign(a, one)  # an administrator may put a bucket over an account's limit
    assert (one.used_bytes, one.objects, one.state) == (70, 2, "hard")
    ledger.assign(a, two)
    assert (one.used_bytes, two.used_bytes) == (0, 70)
    ledger.rename(b"a", b"a2")
    assert two.buckets == {b"a2"}
    ledger.remove(b"a2")  # the bucket was deleted
    assert (two.used_bytes, two.objects, two.buckets) == (0, 0, set())


def test_removing_an_account_frees_its_buckets() -> None:
    ledger = Ledger()
    a = ledger.add(b"a", Limits(max_bytes=None))
    ledger.assign(a, ledger.add_account("acme", Limits(max_bytes=1)))
    ledger.remove_account("acme")
    assert a.account is None
    ledger.charge(a, 1000)


def test_set_usage_moves_the_account_too() -> None:
    ledger = Ledger()
    a = ledger.add(b"a", Limits(), used_bytes=10)
    acct = ledger.add_account("acme", Limits())
    ledger.assign(a, acct)
    ledger.set_usage(a, 25, 3)
    assert (a.used_bytes, a.objects, acct.used_bytes, acct.objects) == (25, 3, 25, 3)


class Disk:
    """Stands in for the .quota files: what a flush wrote, what a reload reads."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.files: dict[bytes, tuple[Limits, int, int]] = {}
        self.reloads = 0
        ledger.loader = self.load

    def flush(self, bucket) -> None:
        self.files[bucket.name] = (bucket.limits, bucket.used_bytes, bucket.objects)
        bucket.dirty = False

    def load(self, name: bytes):
        self.reloads += 1
        limits, used, objects = self.files[name]
        return self.ledger.readmit(name, limits, used, objects)


def test_an_evicted_bucket_reloads_exactly_and_old_references_follow() -> None:
    ledger = Ledger()
    disk = Disk(ledger)
    b = ledger.add(b"b", Limits(max_bytes=100))
    acct = ledger.add_account("acme", Limits(max_bytes=150))
    ledger.assign(b, acct)
    ledger.charge(b, 60, 2)
    disk.flush(b)
    ledger.evict(b)
    assert ledger.get(b"b") is None and len(ledger) == 0 and ledger.known() == 1
    assert acct.used_bytes == 60  # the account keeps counting it
    live = b.load_live()  # a node still holding the old object
    assert live is not b and live is ledger.get(b"b") and disk.reloads == 1
    assert (live.used_bytes, live.objects, live.limits.max_bytes, live.account) == (60, 2, 100, acct)
    assert b.load_live() is live and ledger.load(b"b") is live and disk.reloads == 1
    with pytest.raises(QuotaExceeded):
        ledger.charge(live, 41)
    ledger.charge(live, 40)
    assert acct.used_bytes == 100


def test_an_evicted_bucket_renamed_after_reload_is_followed() -> None:
    ledger = Ledger()
    disk = Disk(ledger)
    b = ledger.add(b"b", Limits(max_bytes=100))
    ledger.charge(b, 10)
    disk.flush(b)
    ledger.evict(b)
    ledger.load(b"b")  # what the rename handler does first
    ledger.rename(b"b", b"c")
    assert b.load_live() is ledger.get(b"c") and b.load_live().used_bytes == 10


def evicted_member(used: int, objects: int, account: str = "acme"):
    """A ledger with bucket b (used, objects) in *account*, flushed and evicted."""
    ledger = Ledger()
    disk = Disk(ledger)
    b = ledger.add(b"b", Limits(max_bytes=None))
    acct = ledger.add_account(account, Limits(max_bytes=None))
    ledger.assign(b, acct)
    ledger.charge(b, used, objects)
    disk.flush(b)
    ledger.evict(b)
    return ledger, b, acct


def test_account_changes_while_evicted() -> None:
    ledger, b, _ = evicted_member(70, 1, "old")
    ledger.remove_account("old")
    new = ledger.add_account("new", Limits(max_bytes=None))
    new.buckets.add(b"b")  # listed by name, as accounts.json does
    live = ledger.load(b"b")
    assert live.account is new and new.used_bytes == 70 and new.objects == 1


def test_a_scan_replacing_an_evicted_bucket_does_not_count_twice() -> None:
    ledger, b, acct = evicted_member(50, 1)
    fresh = ledger.add(b"b", Limits(max_bytes=None), 80, 2)  # adopted by a scan instead
    assert acct.used_bytes == 80 and acct.objects == 2 and b.load_live() is fresh
    assert not ledger.evicted


def test_removing_an_evicted_bucket_frees_its_account() -> None:
    ledger, b, acct = evicted_member(5, 0)
    ledger.remove(b"b")
    assert acct.used_bytes == 0 and ledger.known() == 0


def limit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ironfs.ledger"]


def test_hovering_at_the_soft_limit_logs_each_crossing_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ironfs.ledger")
    ledger, b = make(1000)  # soft limit 900
    ledger.charge(b, 890)
    for _ in range(500):  # an S3 server overwriting one object around the soft limit
        ledger.charge(b, 20)
        ledger.refund(b, 20)
    assert limit_lines(caplog) == ["bucket b is over its soft limit: 910 of 900 bytes"]
    ledger.refund(b, 30)  # 860: under the soft limit, but within the margin
    assert len(limit_lines(caplog)) == 1
    ledger.refund(b, 20)  # 840 <= 95 % of 900
    assert limit_lines(caplog)[1:] == ["bucket b is back under its soft limit"]


def test_the_hard_limit_is_logged_once_and_refusals_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ironfs.ledger")
    now = [0.0]
    ledger, b = make(1000)
    ledger.refusals = RefusalLog(clock=lambda: now[0], interval=60)
    ledger.charge(b, 1000)
    for _ in range(300):
        with pytest.raises(QuotaExceeded) as info:
            ledger.charge(b, 10)
        ledger.refusals.refused(info.value)
        ledger.refund(b, 5)  # deletes and overwrites near the limit: no new lines
        ledger.charge(b, 5)
        now[0] += 0.1
    ledger.refusals.tick()  # 30 s: too early for the summary
    now[0] += 31
    ledger.refusals.tick()
    ledger.refund(b, 100)  # 900: not yet 95 % of the limit
    ledger.refund(b, 100)
    lines = [line for line in limit_lines(caplog) if "soft" not in line]
    assert lines == ["bucket b reached its hard limit (bytes): growth is refused",
                     "bucket b: 300 request(s) refused in the last 61 s (bucket b's bytes limit)",
                     "bucket b is below its hard limit again"]
