"""The scanner on a plain directory tree."""

from __future__ import annotations

import os
from pathlib import Path

from ironfs.rules import PROFILES
from ironfs.scanner import scan_buckets, scan_tree


def tree(root: Path, files: dict[str, int]) -> None:
    for rel, size in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)


def usage(path: Path, profile: str = "generic") -> tuple[int, int]:
    u = scan_tree(os.fsencode(path), PROFILES[profile])
    return u.used_bytes, u.objects


def test_hidden_files_are_charged_but_not_objects(tmp_path: Path) -> None:
    tree(tmp_path, {"a": 10, "d/b": 20, ".tmp": 5, "d/.part": 7, ".multipart/x/1": 100, "e/.h/f": 3})
    assert usage(tmp_path) == (145, 2)


def test_ironfs_state_is_excluded(tmp_path: Path) -> None:
    tree(tmp_path, {"a": 10, ".quota": 200, ".stats/2026-11.json": 300, ".ironfs-tmp.quota": 9,
                    "d/.quota": 4})
    assert usage(tmp_path) == (14, 1)  # .quota deeper down is a tenant's hidden file


def test_hard_links_count_bytes_once_and_names_each(tmp_path: Path) -> None:
    tree(tmp_path, {"a": 1000})
    os.link(tmp_path / "a", tmp_path / "b")
    os.link(tmp_path / "a", tmp_path / ".c")
    assert usage(tmp_path) == (1000, 2)


def test_symlinks_fifos_and_dirs_are_not_files(tmp_path: Path) -> None:
    tree(tmp_path, {"a": 3})
    os.symlink("/etc/passwd", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "empty").mkdir()
    assert usage(tmp_path) == (3, 1)


def test_ironbucket_profile_sidecars(tmp_path: Path) -> None:
    tree(tmp_path, {"k": 10, "k.metadata": 2, ".versions/k/1": 10})
    assert usage(tmp_path, "generic") == (22, 2)
    assert usage(tmp_path, "ironbucket") == (22, 1)


def test_odd_names(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path)
    for name in (b"\xff\xfe", b"new\nline", b"sp ace"):
        with open(os.path.join(raw, name), "wb") as f:
            f.write(b"12")
    assert usage(tmp_path) == (6, 3)


def test_scan_buckets_in_parallel(tmp_path: Path) -> None:
    for i in range(6):
        tree(tmp_path / f"b{i}", {f"f{j}": i for j in range(i)})
    done: list[bytes] = []
    results = scan_buckets(os.fsencode(tmp_path), [f"b{i}".encode() for i in range(6)],
                           PROFILES["generic"], workers=3, show_progress=False,
                           on_done=lambda name, u: done.append(name))
    assert {k: (v.used_bytes, v.objects) for k, v in results.items()} == {
        f"b{i}".encode(): (i * i, i) for i in range(6)}
    assert sorted(done) == sorted(results)


def test_scan_buckets_spreads_subdirectories_over_processes(tmp_path: Path) -> None:
    tree(tmp_path / "big", {f"p{i}/q{j}/f{k}": 10 for i in range(4) for j in range(3) for k in range(5)})
    tree(tmp_path / "big", {".h/x": 7, "top": 1})
    os.link(tmp_path / "big" / "p0" / "q0" / "f0", tmp_path / "big" / "p3" / "linked")  # across units
    got = scan_buckets(os.fsencode(tmp_path), [b"big"], PROFILES["generic"], workers=2,
                       show_progress=False)[b"big"]
    single = scan_tree(os.fsencode(tmp_path / "big"), PROFILES["generic"])
    assert (got.used_bytes, got.objects) == (single.used_bytes, single.objects) == (600 + 7 + 1, 62)


def _deep(top: Path, depth: int) -> None:
    """A chain of 200-byte directory names, made with *at calls, with a 10-byte
    file at every level."""
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
                f.write(b"0123456789")
            name = f"{i:03d}" + "d" * 197
            os.mkdir(name, dir_fd=fd)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)


def test_trees_deeper_than_path_max_are_scanned(tmp_path: Path) -> None:
    depth = 80  # about 16 KiB of path
    _deep(tmp_path / "b" / "sub", depth)
    (tmp_path / "b" / "sub2").mkdir()
    expected = (10 * depth, depth)
    usage = scan_tree(os.fsencode(tmp_path / "b"), PROFILES["generic"])
    assert (usage.used_bytes, usage.objects) == expected
    out = scan_buckets(os.fsencode(tmp_path), [b"b"], PROFILES["generic"], workers=2,
                       show_progress=False)
    assert (out[b"b"].used_bytes, out[b"b"].objects) == expected
    assert len(os.listdir("/proc/self/fd")) < 20  # the walk's fds were closed
