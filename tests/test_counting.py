"""The S3 counting rules (counting.py) on their own: an injected clock, no
mount, no sleeping."""

from __future__ import annotations

from ironfs.counting import HEAD_WAIT, QUIET_AFTER_USE, Counting, Reading
from ironfs.inodes import Node
from ironfs.stats import StatsBook
from tests.fakefs import World, directory, reg


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Counted:
    def __init__(self, profile: str = "generic") -> None:
        self.world = World(b1_max=None, profile=profile)
        self.clock = Clock()
        self.book = StatsBook(clock=lambda: 1_700_000_000.0)
        for bucket in (self.world.b1, self.world.b2):
            self.book.attach(bucket)
        self.counting = Counting(self.book, self.world.acct, clock=self.clock)

    def counts(self, bucket: bytes = b"b1") -> dict[str, int]:
        b = self.world.ledger.get(bucket)
        assert b is not None
        return {k: v for k, v in self.book.current(b).as_dict().items() if v}

    def obj(self, name: bytes = b"k", parent: Node | None = None) -> Node:
        node, _ = self.world.file(parent or self.world.d1, name, 10)
        return node

    def read_once(self, node: Node) -> None:
        """open read-only, then close: what a GET does to the file."""
        node.open += 1
        reading = self.counting.opened(node, reading=True)
        node.open -= 1
        self.counting.closed(node, wrote=False, reading=reading)


def test_a_lookup_with_no_open_after_it_is_one_head() -> None:
    c = Counted()
    node = c.obj()
    c.counting.looked_at(node)
    c.counting.looked_at(node)  # the kernel asks twice: still one HEAD
    c.clock.advance(HEAD_WAIT - 0.01)
    c.counting.commit_heads()
    assert c.counts() == {}  # not yet: an open may still follow
    c.clock.advance(0.02)
    c.counting.commit_heads()
    assert c.counts() == {"head_count": 1}


def test_a_lookup_followed_by_an_open_is_a_get_not_a_head() -> None:
    c = Counted()
    node = c.obj()
    c.counting.looked_at(node)
    c.read_once(node)
    c.clock.advance(HEAD_WAIT * 2)
    c.counting.commit_heads()
    assert c.counts() == {"get_count": 1}


def test_lookups_right_after_use_are_the_servers_own_checks() -> None:
    c = Counted()
    node = c.obj()
    c.read_once(node)
    c.clock.advance(QUIET_AFTER_USE - 0.1)
    c.counting.looked_at(node)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"get_count": 1}
    c.clock.advance(0.2)
    c.counting.looked_at(node)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"get_count": 1, "head_count": 1}


def test_hidden_files_and_unbucketed_files_count_nothing() -> None:
    c = Counted()
    for node in (c.obj(b".tmp"), c.obj(b"k", c.world.stage)):
        c.counting.looked_at(node)
        c.read_once(node)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {}


def test_write_and_close_is_one_put_and_a_plain_close_none() -> None:
    c = Counted()
    node = c.obj()
    c.counting.written(node)
    c.counting.closed(node, wrote=True, reading=Reading.NOT_READING)
    c.counting.closed(node, wrote=True, reading=Reading.NOT_READING)  # nothing new written
    c.counting.closed(node, wrote=False, reading=Reading.NOT_READING)
    assert c.counts() == {"put_count": 1}


def test_a_file_unlinked_before_its_close_is_no_put() -> None:
    c = Counted()
    node = c.obj()
    c.counting.written(node)
    node.unlinked = True
    c.counting.closed(node, wrote=True, reading=Reading.NOT_READING)
    assert c.counts() == {}


def test_publishing_a_staging_file_is_one_put_and_its_close_none() -> None:
    c = Counted()
    node = c.obj(b"upload", c.world.stage)
    c.counting.written(node)
    c.counting.published(c.world.d1, b"k", node, [b".stage", b"upload"])
    c.counting.closed(node, wrote=True, reading=Reading.NOT_READING)
    assert c.counts() == {"put_count": 1}


def test_rclone_multipart_publication_counts_as_multipart() -> None:
    c = Counted("rclone")
    c.counting.published(c.world.d1, b"m", None, [b".rclone_temp_multipart_abc"])
    c.counting.published(c.world.d1, b"p", None, [b".rclone_temp_put_abc"])
    assert c.counts() == {"multipart_count": 1, "put_count": 1}


def test_rclone_reads_an_object_twice_per_get() -> None:
    c = Counted("rclone")
    node = c.obj()
    c.read_once(node)  # the hash
    c.clock.advance(0.2)
    c.read_once(node)  # the data: the same GET
    c.clock.advance(5)
    c.read_once(node)  # a new GET
    assert c.counts() == {"get_count": 2}


def test_generic_counts_every_read_only_open() -> None:
    c = Counted()
    node = c.obj()
    c.read_once(node)
    c.read_once(node)
    assert c.counts() == {"get_count": 2}


def test_delete_counts_objects_only() -> None:
    c = Counted()
    mode = reg().st_mode
    c.counting.deleted(c.world.d1, b"k", mode)
    c.counting.deleted(c.world.d1, b".tmp", mode)
    c.counting.deleted(c.world.d1, b"dir", directory().st_mode)
    c.counting.deleted(c.world.top, b"k", mode)
    assert c.counts() == {"delete_count": 1}


def test_list_counts_visible_directories_in_buckets() -> None:
    c = Counted()
    for d in (c.world.d1, c.world.stage, c.world.top, c.world.root):
        c.counting.listed(d)
    assert c.counts() == {"list_count": 1}


def test_byte_counters_and_rejections() -> None:
    c = Counted()
    node = c.obj()
    c.counting.bytes_written(c.world.b1, 100)
    c.counting.bytes_read(node, 40)
    c.counting.rejected(c.world.b1)
    assert c.counts() == {"bytes_written": 100, "bytes_read": 40, "quota_rejections": 1}


def test_a_forgotten_lookup_is_no_head() -> None:
    c = Counted()
    node = c.obj()
    c.counting.looked_at(node)
    c.counting.forgotten(node)  # unlinked before HEAD_WAIT: the server's own check
    c.counting.commit_heads(everything=True)
    assert c.counts() == {}


def test_rclone_overwrite_unlinks_then_publishes_and_is_no_delete() -> None:
    c = Counted("rclone")
    mode = reg().st_mode
    c.counting.deleted(c.world.d1, b"k", mode)  # rclone removes the old object ...
    c.counting.published(c.world.d1, b"k", None, [b".rclone_temp_put_1"])  # ... then renames onto it
    c.counting.deleted(c.world.d1, b"gone", mode)  # a real DeleteObject
    c.clock.advance(0.1)
    c.counting.commit_heads()
    assert c.counts() == {"put_count": 1}  # the real delete is still within the window
    c.clock.advance(0.2)
    c.counting.commit_heads()
    assert c.counts() == {"put_count": 1, "delete_count": 1}


def test_unlinks_pending_at_a_stop_are_counted() -> None:
    c = Counted("rclone")
    c.counting.deleted(c.world.d1, b"k", reg().st_mode)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"delete_count": 1}
