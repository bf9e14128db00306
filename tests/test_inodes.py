"""The inode table with made-up stat results: deterministic inode numbers."""

from __future__ import annotations

from types import SimpleNamespace

from ironfs.inodes import ROOT_INODE, InodeTable


def st(ino: int) -> SimpleNamespace:
    return SimpleNamespace(st_dev=1, st_ino=ino)


def table() -> InodeTable:
    return InodeTable(b"/backing", (1, 2))


def test_paths_follow_ancestors() -> None:
    t = table()
    d = t.remember(t.root, b"bucket", st(10), None, False)
    f = t.remember(d, b"f", st(11), None, False)
    assert t.path(f) == b"/backing/bucket/f"
    e = t.remember(t.root, b"other", st(12), None, False)
    t.moved(d, t.root, b"bucket", e, b"moved")
    assert t.path(f) == b"/backing/other/moved/f"


def test_same_backing_inode_is_one_node_with_links() -> None:
    t = table()
    d = t.remember(t.root, b"d", st(10), None, False)
    a = t.remember(d, b"a", st(11), None, False)
    b = t.remember(d, b"b", st(11), None, False)
    assert a is b and a.lookups == 2 and a.extra_links == [(d, b"b")]
    t.unlinked(a, d, b"a")  # the primary name goes: the other takes over
    assert t.path(a) == b"/backing/d/b"


def test_node_ids_are_the_backing_inode_numbers() -> None:
    t = table()
    f = t.remember(t.root, b"f", st(5827), None, False)
    assert f.ino == 5827 and f.generation == 0
    t.forget(f.ino, 1)  # the kernel forgot it (drop_caches)
    again = t.remember(t.root, b"f", st(5827), None, False)
    assert again.ino == 5827  # the same st_ino, whatever the kernel forgot


def test_other_devices_and_reserved_numbers_get_made_up_ids() -> None:
    t = table()
    foreign = t.remember(t.root, b"m", SimpleNamespace(st_dev=9, st_ino=5827), None, False)
    one = t.remember(t.root, b"one", st(1), None, False)
    mine = t.remember(t.root, b"f", st(5827), None, False)
    assert mine.ino == 5827 and len({foreign.ino, one.ino, mine.ino, ROOT_INODE}) == 4


def test_a_gone_inode_number_is_free_for_a_new_file() -> None:
    t = table()
    old = t.remember(t.root, b"f", st(11), None, False)
    t.gone(old)  # unlinked; the kernel still holds `old`
    new = t.remember(t.root, b"g", st(11), None, False)  # ext4 reused the number
    # The same number in a new generation: the kernel retires its old inode.
    assert new is not old and new.ino == old.ino == 11 and new.generation == old.generation + 1
    assert t.get(11) is new and t.by_key((1, 11)) is new
    t.forget(11, 1)  # the old inode's FORGET: the number stays for the new file
    assert t.get(11) is new and t.by_key((1, 11)) is new
    t.forget(11, 1)
    assert len(t) == 1


def test_parents_live_while_children_are_known() -> None:
    t = table()
    d = t.remember(t.root, b"d", st(10), None, False)
    f = t.remember(d, b"f", st(11), None, False)
    t.forget(d.ino, 1)
    assert t.get(d.ino) is d  # still needed for f's path
    t.forget(f.ino, 1)
    assert len(t) == 1 and t.get(ROOT_INODE) is t.root


def test_open_files_outlive_forget() -> None:
    t = table()
    f = t.remember(t.root, b"f", st(11), None, False)
    f.open = 1
    t.forget(f.ino, 1)
    assert t.get(f.ino) is f
    f.open = 0
    t.collect(f)
    assert len(t) == 1
