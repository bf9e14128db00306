"""The S3 counting rules (counting.py) on their own: an injected clock, no
mount, no sleeping."""

from __future__ import annotations

from ironfs.counting import Counting, Reading
from ironfs.inodes import Node
from ironfs.lookups import HEAD_WAIT
from ironfs.rules import PROFILES
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
        self.names: frozenset[bytes] | None = None  # what the directory holds, if known
        self.counting = Counting(self.book, self.world.acct, clock=self.clock,
                                 names_in=lambda directory, age: self.names)

    def counts(self, bucket: bytes = b"b1") -> dict[str, int]:
        b = self.world.ledger.get(bucket)
        assert b is not None
        return {k: v for k, v in self.book.current(b).as_dict().items() if v}

    def obj(self, name: bytes = b"k", parent: Node | None = None) -> Node:
        node, _ = self.world.file(parent or self.world.d1, name, 10)
        return node

    def read_once(self, node: Node, first: tuple[int, int] | None = None) -> None:
        """open read-only, read (*first*: the first read's offset and size), close."""
        reading = self.open_read(node, first)
        self.close_read(node, reading)

    def open_read(self, node: Node, first: tuple[int, int] | None = None) -> Reading:
        node.open += 1
        reading = self.counting.opened(node, reading=True)
        if reading == Reading.PENDING and first is not None:
            reading = self.counting.first_read(node, *first)
        return reading

    def close_read(self, node: Node, reading: Reading) -> None:
        node.open -= 1
        self.counting.closed(node, wrote=False, reading=reading)

    def stat(self, *nodes: Node, step: float = 0.0001) -> None:
        """What one stat(2) by the server is with object_timeout=0: a LOOKUP
        then a GETATTR of the object."""
        for node in nodes:
            self.counting.looked_at(node, lookup=True)
            self.counting.looked_at(node, lookup=False)
            self.clock.advance(step)


def test_a_lookup_with_no_open_after_it_is_one_head() -> None:
    c = Counted()
    node = c.obj()
    c.counting.looked_at(node, lookup=True)
    c.counting.looked_at(node, lookup=False)  # the kernel asks twice: still one HEAD
    c.clock.advance(HEAD_WAIT - 0.01)
    c.counting.commit_heads()
    assert c.counts() == {}  # not yet: an open may still follow
    c.clock.advance(0.02)
    c.counting.commit_heads()
    assert c.counts() == {"head_count": 1}


def test_a_lookup_followed_by_an_open_is_a_get_not_a_head() -> None:
    c = Counted()
    node = c.obj()
    c.counting.looked_at(node, lookup=True)
    c.read_once(node)
    c.clock.advance(HEAD_WAIT * 2)
    c.counting.commit_heads()
    assert c.counts() == {"get_count": 1}


def test_lookups_right_after_use_are_the_servers_own_checks() -> None:
    c = Counted()
    node = c.obj()
    c.read_once(node)
    c.clock.advance(PROFILES["generic"].quiet_after_use - 0.1)
    c.counting.looked_at(node, lookup=True)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"get_count": 1}
    c.clock.advance(0.2)
    c.counting.looked_at(node, lookup=True)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"get_count": 1, "head_count": 1}


def test_hidden_files_and_unbucketed_files_count_nothing() -> None:
    c = Counted()
    for node in (c.obj(b".tmp"), c.obj(b"k", c.world.stage)):
        c.counting.looked_at(node, lookup=True)
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


HASH = (0, 32768)  # rclone 1.75.2 hashes with 32 KiB reads ...
SERVE = (0, 4096)  # ... and serves a GET with reads that start at 4 KiB


def test_rclone_hash_reads_are_no_get_and_their_bytes_no_bytes_read() -> None:
    c = Counted("rclone")
    node = c.obj()
    c.stat(node, node)
    c.read_once(node, HASH)  # a HEAD of an object rclone had not hashed yet
    c.clock.advance(HEAD_WAIT + 0.1)
    c.counting.commit_heads()
    assert c.counts() == {"head_count": 1}
    c.stat(node, node)
    c.read_once(node, HASH)  # a GET of an object not hashed: the hash ...
    c.stat(node, node)
    c.read_once(node, SERVE)  # ... then the data
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 1, "get_count": 1}


def test_rclone_range_get_opens_twice_and_is_one_get() -> None:
    c = Counted("rclone")
    node = c.obj()
    first = c.open_read(node, SERVE)
    second = c.open_read(node)  # opened while the first is still open
    c.close_read(node, first)
    c.close_read(node, second)
    assert second == Reading.SAME_GET
    unread = c.open_read(node)  # a first handle never read (rclone opens before it seeks) ...
    later = c.open_read(node, (5_000_000, 4096))  # ... and the one that serves the range
    c.close_read(node, unread)
    c.close_read(node, later)
    assert c.counts() == {"get_count": 2}


def test_rclone_list_is_a_sweep_of_stats_in_path_order() -> None:
    c = Counted("rclone")
    a, b, k = c.obj(b"a"), c.obj(b"b"), c.obj(b"k")
    c.stat(a, b, k)  # LIST of three hashed objects: one stat each, in name order
    c.clock.advance(0.05)
    c.stat(b)  # a HEAD: a new request (past list_gap and request_gap) ...
    c.clock.advance(0.05)
    c.stat(a)  # ... and another
    c.clock.advance(HEAD_WAIT)
    c.counting.commit_heads()
    assert c.counts() == {"list_count": 1, "head_count": 2}


def test_rclone_list_of_objects_not_hashed_yet_is_one_list() -> None:
    c = Counted("rclone")
    nodes = [c.obj(name) for name in (b"a", b"b", b"c")]
    for node in nodes:
        c.stat(node, node)
        c.read_once(node, HASH)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"list_count": 1}


def test_rclone_get_after_a_head_of_the_same_object_leaves_the_head() -> None:
    c = Counted("rclone")
    node = c.obj()
    c.stat(node)  # HEAD
    c.clock.advance(0.05)
    c.stat(node, node, node)  # GET
    reading = c.open_read(node, SERVE)
    c.counting.bytes_read(node, 10, at_end=True)
    c.close_read(node, reading)
    c.stat(node)  # rclone's check of the hash at the end of the GET: no HEAD
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 1, "get_count": 1, "bytes_read": 10}


def test_rclone_second_handle_of_a_range_get_leaves_an_earlier_head() -> None:
    c = Counted("rclone")
    node = c.obj()
    c.stat(node)  # HEAD
    c.clock.advance(0.05)
    c.stat(node, node, node)  # a range GET: two stats and its first open's lookup ...
    first = c.open_read(node, SERVE)
    c.stat(node, node)  # ... a stat and the second open's lookup while it serves ...
    second = c.open_read(node)  # ... and the second handle: nothing more to match
    c.close_read(node, second)
    c.close_read(node, first)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 1, "get_count": 1}


def test_rclone_range_get_read_to_the_end_is_not_checked_after() -> None:
    """rclone 1.75.2 stats an object once more after a GET read to its end
    through one handle, never after a range GET (traced: nor when the range
    ends at the last byte), so a client's HEAD soon after is a HEAD."""
    c = Counted("rclone")
    node = c.obj()
    c.stat(node, node, node, node, node)  # 3 stats, 2 opens' lookups
    unread = c.open_read(node)
    served = c.open_read(node, (4000, 4096))
    c.counting.bytes_read(node, 1000, at_end=True)
    c.close_read(node, unread)
    c.close_read(node, served)
    c.clock.advance(0.05)
    c.stat(node)  # HEAD
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 1, "get_count": 1, "bytes_read": 1000}


def test_rclone_get_long_after_a_hash_read_is_not_its_request() -> None:
    """A LIST of one object not hashed yet (two stats, a hash read: a HEAD's
    count), then 0.3 s later a range GET with as many lookups as one right
    after a hash read: that hash read was the LIST's, which stays counted."""
    c = Counted("rclone")
    node = c.obj()
    c.stat(node, node)
    c.read_once(node, HASH)
    c.clock.advance(0.3)
    c.stat(node, node, node, node)
    unread = c.open_read(node)
    served = c.open_read(node, (4000, 4096))
    c.close_read(node, unread)
    c.close_read(node, served)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 1, "get_count": 1}


def test_rclone_get_opened_long_after_its_stats_keeps_its_hash_read() -> None:
    """A GET of an object not hashed yet (two stats, a hash read, two stats
    right after it), its open 0.3 s later (rclone descheduled on a busy
    machine, traced): the hash read was still the GET's, no HEAD."""
    c = Counted("rclone")
    node = c.obj()
    c.stat(node, node)
    c.read_once(node, HASH)
    c.stat(node, node)
    c.clock.advance(0.3)
    c.read_once(node, SERVE)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"get_count": 1}


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
    c.counting.written(node)
    c.counting.bytes_written(node, 100)
    c.counting.bytes_read(node, 40, at_end=False)
    c.counting.rejected(c.world.b1)
    assert c.counts() == {"bytes_read": 40, "quota_rejections": 1}  # not uploaded yet
    c.counting.closed(node, wrote=True, reading=Reading.NOT_READING)
    assert c.counts() == {"bytes_written": 100, "bytes_read": 40, "quota_rejections": 1,
                          "put_count": 1}


def test_bytes_of_an_upload_never_published_are_not_counted() -> None:
    c = Counted("rclone")
    temp = c.obj(b".rclone_temp_put_1")
    c.counting.written(temp)
    c.counting.bytes_written(temp, 4096)  # then a refused write: rclone removes the temp file
    done = c.obj(b".rclone_temp_put_2")
    c.counting.written(done)
    c.counting.bytes_written(done, 300)
    c.counting.published(c.world.d1, b"k", done, [b".rclone_temp_put_2"])
    assert c.counts() == {"put_count": 1, "bytes_written": 300}


def test_a_forgotten_lookup_is_no_head() -> None:
    c = Counted()
    node = c.obj()
    c.counting.looked_at(node, lookup=True)
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


def test_a_delete_then_a_put_of_the_same_key_is_both() -> None:
    """rclone's overwrite unlinks the old object while its upload is already
    staged; a client's DELETE and then PUT of that key unlinks before the
    upload begins: the same syscalls, told apart by that order, not by time."""
    c = Counted("rclone")
    mode = reg().st_mode
    staged = c.obj(b".rclone_temp_put_1")
    c.counting.written(staged)  # an upload to k begins ...
    c.clock.advance(0.01)
    c.counting.deleted(c.world.d1, b"k", mode)  # ... k is unlinked just before the rename:
    c.counting.published(c.world.d1, b"k", staged, [b".rclone_temp_put_1"])  # an overwrite
    c.clock.advance(0.01)
    c.counting.deleted(c.world.d1, b"k", mode)  # a client's DELETE of k ...
    c.clock.advance(0.01)
    again = c.obj(b".rclone_temp_put_2")
    c.counting.written(again)  # ... then its PUT of k, within the overwrite window
    c.counting.published(c.world.d1, b"k", again, [b".rclone_temp_put_2"])
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"put_count": 2, "delete_count": 1}


def test_an_unlink_held_in_a_removed_directory_is_a_delete_at_once() -> None:
    """rclone removes a prefix's directory with its last object; the next mkdir
    may get its inode number, so an upload there has the same (directory, name)
    key as the unlink held for the old one: that unlink is counted at the rmdir."""
    c = Counted("rclone")
    mode = reg().st_mode
    staged = c.obj(b".rclone_temp_put_1")
    c.counting.written(staged)  # (staged even before the unlink: order cannot tell)
    c.counting.deleted(c.world.d1, b"k", mode)  # the last object of the prefix ...
    c.counting.removed_directory(c.world.d1.key)  # ... and its directory
    assert c.counts() == {"delete_count": 1}
    c.counting.published(c.world.d1, b"k", staged, [b".rclone_temp_put_1"])  # same key, new directory
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"delete_count": 1, "put_count": 1}


def test_unlinks_pending_at_a_stop_are_counted() -> None:
    c = Counted("rclone")
    c.counting.deleted(c.world.d1, b"k", reg().st_mode)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"delete_count": 1}


def test_rclone_directory_reads_and_own_checks_are_no_requests() -> None:
    c = Counted("rclone")
    a, b = c.obj(b"a"), c.obj(b"b")
    c.counting.listed(c.world.d1)  # rclone re-reads the directory after a PUT:
    c.stat(a, b)  # Go's Readdir stats every entry while the directory is open
    c.counting.unlisted(c.world.d1)
    c.counting.published(c.world.d1, b"a", a, [b".rclone_temp_put_1"])
    c.stat(a)  # rclone's stat of the key it just renamed into place
    c.clock.advance(0.05)
    c.stat(a)  # a client's HEAD right after its PUT
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"put_count": 1, "head_count": 1}


def test_rclone_lookups_are_matched_to_requests_by_count_not_time() -> None:
    c = Counted("rclone")
    node = c.obj()
    c.stat(node)  # HEAD
    c.stat(node)  # HEAD again, at once
    c.stat(node, node, node)  # GET (three stats, then the data)
    c.read_once(node, SERVE)
    c.clock.advance(1.1)  # past rclone's own check after a GET
    c.stat(node)  # HEAD
    c.stat(node)  # DELETE: one stat, then the unlink
    c.counting.deleted(c.world.d1, b"k", reg().st_mode, node)
    c.counting.forgotten(node)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 3, "get_count": 1, "delete_count": 1}


def test_rclone_overwrite_takes_two_stats_of_the_old_object() -> None:
    c = Counted("rclone")
    node = c.obj()
    c.stat(node)  # HEAD
    c.stat(node, node)  # PUT over it: two stats, the unlink, the rename
    c.counting.deleted(c.world.d1, b"k", reg().st_mode, node)
    c.counting.published(c.world.d1, b"k", None, [b".rclone_temp_put_1"])
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 1, "put_count": 1}


def test_rclone_list_slowed_down_between_stats_is_still_one_list() -> None:
    c = Counted("rclone")
    a, b, k = c.obj(b"a"), c.obj(b"b"), c.obj(b"k")
    c.names = frozenset((b"a", b"b", b"k"))
    c.stat(a, step=0.005)  # each stat further apart than list_gap...
    c.stat(b, k)  # ... and then two close together (name order, as rclone's): one LIST
    c.clock.advance(HEAD_WAIT + 0.1)
    c.counting.commit_heads()
    assert c.counts() == {"list_count": 1}
    c.stat(a, step=0.005)
    c.stat(b, step=0.005)
    c.stat(k, step=0.005)  # lone stats of every object of the directory: a LIST too
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"list_count": 2}


def test_rclone_quick_heads_of_every_object_out_of_name_order_are_heads() -> None:
    """rclone stats a LIST's objects in ascending name order (traced: 1.75.2
    sorts a directory's entries, bytewise); a client's HEADs of every object of
    a small directory, each soon after the last, are HEADs unless they happen
    to come in that order (then they are the same stats as a LIST)."""
    c = Counted("rclone")
    a, b, k = c.obj(b"a"), c.obj(b"b"), c.obj(b"k")
    c.names = frozenset((b"a", b"b", b"k"))
    c.stat(b, step=0.005)
    c.stat(a, step=0.005)
    c.stat(k, step=0.005)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 3}
    k10, k9 = c.obj(b"k10"), c.obj(b"k9")
    c.names = frozenset((b"a", b"b", b"k", b"k10", b"k9"))
    c.stat(a, b, k, k10, k9, step=0.005)  # bytewise: k10 before k9
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 3, "list_count": 1}


def test_rclone_quick_heads_of_some_objects_are_heads() -> None:
    c = Counted("rclone")
    a, b = c.obj(b"a"), c.obj(b"b")
    c.names = frozenset((b"a", b"b", b"k"))
    c.stat(a, step=0.005)
    c.stat(b, step=0.005)  # two HEADs 5 ms apart, not all the directory: HEADs
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 2}
    c.names = None  # a directory too large to read: lone stats are HEADs
    c.stat(a, step=0.005)
    c.stat(b, step=0.005)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 4}


def test_rclone_head_just_before_a_list_of_its_directory_stays_a_head() -> None:
    """A client's HEAD, then its LIST of the directory a few ms later: the
    LIST's stats come in ascending name order from the first name, so a HEAD
    of a later name is no part of it (the mixed workload made one LIST of the
    HEAD and the first objects, and another of the rest)."""
    c = Counted("rclone")
    names = (b"k15", b"k16", b"k17", b"k2", b"k3")
    nodes = {name: c.obj(name) for name in names}
    c.names = frozenset(names)
    c.stat(nodes[b"k17"], step=0.005)  # HEAD
    c.stat(*(nodes[name] for name in names[:2]), step=0.001)  # LIST: a sweep ...
    c.clock.advance(0.004)  # (rclone hashing, say)
    c.stat(*(nodes[name] for name in names[2:]), step=0.001)  # ... and another
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 1, "list_count": 1}


def test_rclone_lone_stats_miss_no_object_deleted_since_they_began() -> None:
    """Lone stats of a directory's objects in name order are a LIST only if
    they are of every object it held when they began: an object unlinked
    since (gone from the disk when they are counted, half a second later)
    still counts, one made since does not."""
    c = Counted("rclone")
    mode = reg().st_mode
    a, b = c.obj(b"a"), c.obj(b"b")
    c.names = frozenset((b"a", b"b"))  # on disk, and older than the stats, when they are counted
    c.stat(a, step=0.005)
    c.stat(b, step=0.005)  # HEADs of a and b ...
    c.counting.deleted(c.world.d1, b"c", mode, None, age=60.0)  # ... and c, there before them, deleted
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 2, "delete_count": 1}
    c.clock.advance(1)
    c.stat(a, step=0.005)
    c.stat(b, step=0.005)  # a LIST, slowed down ...
    c.counting.deleted(c.world.d1, b"d", mode, None, age=0.001)  # ... d, made after it began, deleted
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 2, "delete_count": 2, "list_count": 1}
    c.clock.advance(1)
    c.stat(a, step=0.005)
    c.stat(b, step=0.005)  # a LIST, slowed down, then a DELETE of both (a stat, an unlink) ...
    for node in (a, b):
        c.stat(node, step=0.005)
        c.counting.deleted(c.world.d1, node.name, mode, node, age=60.0)
    c.names = frozenset()  # ... and of their directory with them
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 2, "delete_count": 4, "list_count": 2}


def test_rclone_two_heads_one_right_after_the_other_are_heads() -> None:
    """Two HEADs, the second's stat within 2 ms of the first's last read (of
    its hash, say): one sweep, but not of every object that begins with their
    common prefix, as a LIST's of two would be (of its directory, or of a
    prefix: rclone stats only the objects a LIST's prefix matches, traced)."""
    c = Counted("rclone")
    k1, k16, k2, k26 = (c.obj(name) for name in (b"k1", b"k16", b"k2", b"k26"))
    c.names = frozenset((b"k1", b"k16", b"k2", b"k26"))
    c.stat(k16, k26)  # HEADs ("k" begins all four)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 2}
    c.clock.advance(1)
    c.stat(k2, k26)  # a LIST of prefix "k2"
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 2, "list_count": 1}
    c.names = None  # a directory too large to read: two in a sweep are a LIST
    c.stat(k16, k26)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"head_count": 2, "list_count": 2}


def test_rclone_list_interrupted_longer_than_list_merge_gap_is_one_list() -> None:
    """rclone stats every object a LIST's prefix matches, in name order; on a
    busy machine it may stall for tens of ms between two of them (the mixed
    workload beside a CPU hog: up to 185 ms).  A chain missing objects of its
    own common prefix was interrupted: the chains right before and after it
    in that directory, which complete it, are its other fragments."""
    c = Counted("rclone")
    nodes = {name: c.obj(name) for name in (b"k1", b"k16", b"k2", b"k3")}
    k1, k16, k2, k3 = nodes.values()
    c.names = frozenset(nodes)
    c.stat(k1)
    c.clock.advance(0.3)  # a first fragment, alone ...
    c.stat(k16, k2, k3)  # ... and the rest of the LIST
    c.clock.advance(HEAD_WAIT - 0.25)
    c.counting.commit_heads()
    assert c.counts() == {}  # k1 is due, but what goes on after it is not yet
    c.clock.advance(0.3)
    c.counting.commit_heads()
    assert c.counts() == {"list_count": 1}
    c.stat(k1, k16)  # every object beginning with "k1" ...
    c.clock.advance(0.03)
    c.stat(k2, k3)  # ... then the rest ("k": k1 and k16 missing)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"list_count": 2}
    c.stat(k1, k16, k2)
    c.clock.advance(0.03)
    c.stat(k3)  # a trailing lone fragment
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"list_count": 3}
    c.stat(k1)
    c.clock.advance(0.03)
    for node in (k16, k2, k3):
        c.stat(node, step=0.005)  # lone stats, each within list_merge_gap: a chain of three
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"list_count": 4}


def test_rclone_list_interrupted_after_its_first_object_is_one_list_whatever_the_names() -> None:
    """A LIST stalled after its first stat, the rest lone stats each a few ms
    apart (a chain, HEADs on its own): one LIST, even if the rest's names share
    a longer prefix (k4) of which they are every object (the mixed workload
    beside a CPU hog counted five HEADs).  A sweep of that prefix after a HEAD
    is a LIST on its own: the HEAD stays."""
    c = Counted("rclone")
    names = (b"k32", b"k41", b"k42", b"k43", b"k44")
    nodes = [c.obj(name) for name in names]
    c.names = frozenset(names)
    c.stat(nodes[0])
    c.clock.advance(0.017)  # longer than list_merge_gap
    for node in nodes[1:]:
        c.stat(node, step=0.005)  # longer than list_gap, within list_merge_gap
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"list_count": 1}
    c.stat(nodes[0])  # a HEAD ...
    c.clock.advance(0.017)
    c.stat(*nodes[1:])  # ... then a LIST of prefix "k4"
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"list_count": 2, "head_count": 1}


def test_rclone_chains_that_complete_nothing_stay_apart() -> None:
    """Chains of one directory in name order are one LIST only if one of them
    lacks objects of its own prefix, one is a sweep of two or more, and they
    are not split by a change or a read of the directory (a client's HEAD, a
    PUT, then its LIST, whose own stat of the HEAD's object may come inside
    rclone's re-read of the directory and be skipped)."""
    c = Counted("rclone")
    nodes = {name: c.obj(name) for name in (b"k1", b"k16", b"k2", b"k26")}
    k1, k16, k2, k26 = nodes.values()
    c.names = frozenset(nodes)
    c.stat(k1, k16)  # a LIST of prefix "k1" ...
    c.clock.advance(0.03)
    c.stat(k2, k26)  # ... then one of "k2": each complete on its own
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"list_count": 2}
    c.stat(k1, step=0.03)
    c.stat(k16, step=0.03)
    c.stat(k2, step=0.03)
    c.stat(k26, step=0.03)  # lone stats only, 30 ms apart: HEADs (or a LIST, unknowable)
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"list_count": 2, "head_count": 4}
    c.stat(k1)  # a HEAD ...
    c.clock.advance(0.1)
    c.counting.listed(c.world.d1)  # ... a read of the directory ...
    c.counting.unlisted(c.world.d1)
    c.clock.advance(0.1)
    c.stat(k16, k2, k26)  # ... and a LIST whose stat of k1 was not seen
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"list_count": 3, "head_count": 5}
    c.clock.advance(1)
    mode = reg().st_mode
    c.stat(k1)  # a HEAD, a DELETE of that object (a stat, an unlink) ...
    c.clock.advance(0.05)
    c.stat(k1)
    c.counting.deleted(c.world.d1, b"k1", mode, k1, age=60.0)
    c.names = frozenset((b"k16", b"k2", b"k26"))
    c.clock.advance(0.1)
    c.stat(k16, k2, k26)  # ... and a LIST of what is left: complete when it began
    c.counting.commit_heads(everything=True)
    assert c.counts() == {"list_count": 4, "head_count": 6, "delete_count": 1}


def test_a_lookup_of_a_file_being_written_is_no_head() -> None:
    c = Counted()
    node = c.obj()
    node.open += 1
    c.counting.opened(node, reading=False)
    c.clock.advance(5)  # a long upload: past the quiet time after its open
    c.counting.looked_at(node, lookup=False)  # the writer's fstat
    c.counting.commit_heads(everything=True)
    assert c.counts() == {}
