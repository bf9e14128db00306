"""The one mountinfo parser: escapes, types, malformed lines."""

from __future__ import annotations

from ironfs.mountinfo import MountEntry, parse, unescape

SAMPLE = (
    b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    b"98 22 0:50 / /tmp/with\\040space/s3 rw,nosuid shared:60 - fuse.ironfs /b rw,user_id=0\n"
    b"99 22 0:51 / /tmp/tab\\011and\\134slash rw - fuse /x rw\n"
    b"100 22 0:52 / /tmp/opt rw shared:7 master:2 - fuse.other /y rw\n"
    b"garbage\n"
)


def test_paths_are_unescaped_and_types_read() -> None:
    assert parse(SAMPLE) == [
        MountEntry(b"/", b"ext4"),
        MountEntry(b"/tmp/with space/s3", b"fuse.ironfs"),
        MountEntry(b"/tmp/tab\tand\\slash", b"fuse"),
        MountEntry(b"/tmp/opt", b"fuse.other"),  # optional fields before the separator
    ]


def test_unescape_leaves_other_backslashes() -> None:
    assert unescape(b"a\\040b\\012c") == b"a b\nc"
    assert unescape(b"a\\x\\12") == b"a\\x\\12"
