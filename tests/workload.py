"""Client workloads run as separate processes against a mount (crash and
concurrency tests).  ``python -m tests.workload crash MNT JOURNAL SEED``."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import sys
from pathlib import Path

BUCKETS = ("a", "b")
KEYS = 24


def digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


class Journal:
    """What the client knows it did: an intent line before an operation, the
    resulting state of the names it touched after it (read back)."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "a", buffering=1)

    def intent(self, names: list[str]) -> None:
        self.f.write(json.dumps({"intent": names}) + "\n")

    def state(self, mnt: Path, names: list[str]) -> None:
        self.f.write(json.dumps({"state": {n: digest(mnt / n) for n in names}}) + "\n")


def crash(mnt: Path, journal_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    journal = Journal(journal_path)
    while True:
        bucket = rng.choice(BUCKETS)
        key = f"{bucket}/k{rng.randrange(KEYS)}"
        other = f"{rng.choice(BUCKETS)}/k{rng.randrange(KEYS)}"
        op = rng.choice(("put", "put", "put", "append", "rename", "unlink", "truncate"))
        names = [key, other] if op == "rename" else [key]
        journal.intent(names)
        try:
            if op == "put":  # an S3 server's PUT: a hidden temp file renamed onto the key
                tmp = mnt / bucket / f".tmp-{rng.randrange(1 << 30)}"
                try:
                    tmp.write_bytes(rng.randbytes(rng.randrange(0, 300_000)))
                    os.rename(tmp, mnt / key)
                finally:
                    if tmp.exists():
                        tmp.unlink()
            elif op == "append":
                with open(mnt / key, "ab") as f:
                    f.write(rng.randbytes(rng.randrange(1, 50_000)))
            elif op == "rename":
                os.rename(mnt / key, mnt / other)
            elif op == "unlink":
                os.unlink(mnt / key)
            else:
                os.truncate(mnt / key, rng.randrange(0, 100_000))
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOSPC):
                raise  # ENOTCONN once the daemon is killed ends the run
        journal.state(mnt, names)


def churn(mnt: Path, buckets: list[str], worker: int, seed: int, seconds: float,
          out: Path) -> None:
    """Writes, truncates, renames and deletes near the limit, for *seconds*.
    Files named w<worker>-* are this worker's alone, so a refused write can be
    checked to have written nothing; s-* names are shared and fought over."""
    import time
    rng = random.Random(seed)
    counts = {"ops": 0, "refused": 0, "unexpected": []}
    mine: dict[str, str] = {}  # name -> bucket
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        counts["ops"] += 1
        op = rng.choice(("write", "write", "append", "truncate", "move", "delete", "share", "unshare"))
        try:
            if op == "write" or not mine:
                n += 1
                name, bucket = f"w{worker}-{n}", rng.choice(buckets)
                mine[name] = bucket
                _checked_write(mnt / bucket / name, 0, rng.randrange(1, 300_000), counts)
                continue
            name = rng.choice(sorted(mine))
            path = mnt / mine[name] / name
            if op == "append":
                _checked_write(path, None, rng.randrange(1, 200_000), counts)
            elif op == "truncate":
                size = path.stat().st_size
                new = rng.randrange(0, size * 2 + 100_000)
                try:
                    os.truncate(path, new)
                except OSError as e:
                    _refused(e, counts)
                    assert path.stat().st_size == size, "a refused truncate changed the size"
            elif op == "move":
                target = rng.choice(buckets)
                try:
                    os.rename(path, mnt / target / name)
                    mine[name] = target
                except OSError as e:
                    _refused(e, counts)
                    assert path.exists(), "a refused rename lost its source"
            elif op == "delete":
                os.unlink(path)
                del mine[name]
            elif op == "share":
                os.rename(path, mnt / mine[name] / f"s-{rng.randrange(8)}")
                del mine[name]
            else:
                os.unlink(mnt / rng.choice(buckets) / f"s-{rng.randrange(8)}")
        except FileNotFoundError:
            pass  # a shared name someone else removed first
        except OSError as e:
            counts["unexpected"].append(f"{op}: {e}")
    out.write_text(json.dumps(counts))


def _refused(e: OSError, counts: dict) -> None:
    if e.errno != errno.ENOSPC:
        raise e
    counts["refused"] += 1


def _checked_write(path: Path, offset: int | None, size: int, counts: dict) -> None:
    """Write *size* bytes at *offset* (the end when None); a refusal must be
    ENOSPC and leave the file as it was (a short write keeps what landed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        before = os.fstat(fd).st_size
        at = before if offset is None else offset
        try:
            done = os.pwrite(fd, os.urandom(size), at)
        except OSError as e:
            _refused(e, counts)
            assert os.fstat(fd).st_size == before, "a refused write changed the size"
            return
        if done < size:
            counts["refused"] += 1  # crossed the limit mid-page: a short count
        assert os.fstat(fd).st_size == max(before, at + done)
    finally:
        os.close(fd)


def replay(journal_path: Path) -> dict[str, str | None]:
    """Names whose content the client knows for sure, at the kill."""
    known: dict[str, str | None] = {}
    pending: list[str] = []
    for line in journal_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            break  # the last line, torn by the kill
        if "intent" in entry:
            pending = entry["intent"]
            for n in pending:
                known.pop(n, None)
        else:
            known.update(entry["state"])
            pending = []
    for n in pending:
        known.pop(n, None)
    return known


def tree(mnt: Path, bucket: str, seed: int, seconds: float) -> None:
    """Random changes all over a bucket's tree: files written, appended,
    truncated, linked, renamed within and across directories (over each
    other too), deleted; directories made, renamed, hidden and published."""
    import time
    rng = random.Random(seed)
    top = mnt / bucket
    deadline = time.monotonic() + seconds

    def some_dir() -> Path:
        dirs = [p for p in top.glob("*") if p.is_dir()] + [top]
        return rng.choice(dirs)

    def some_file() -> Path | None:
        d = some_dir()
        files = [p for p in d.iterdir() if p.is_file()] if d.exists() else []
        return rng.choice(files) if files else None

    while time.monotonic() < deadline:
        op = rng.choice(("new", "new", "append", "truncate", "rename", "rename", "unlink",
                         "link", "mkdir", "rendir"))
        try:
            if op == "new":
                name = f"{'.' if rng.random() < 0.2 else ''}n{rng.randrange(1 << 20)}"
                (some_dir() / name).write_bytes(rng.randbytes(rng.randrange(0, 20_000)))
            elif op == "mkdir":
                (top / f"{'.' if rng.random() < 0.3 else ''}d{rng.randrange(1 << 20)}").mkdir()
            elif op == "rendir":
                d = some_dir()
                if d != top:
                    hidden = rng.random() < 0.5
                    os.rename(d, top / f"{'.' if hidden else ''}d{rng.randrange(1 << 20)}")
            else:
                f = some_file()
                if f is None:
                    continue
                if op == "append":
                    with open(f, "ab") as out:
                        out.write(rng.randbytes(rng.randrange(1, 5_000)))
                elif op == "truncate":
                    os.truncate(f, rng.randrange(0, 30_000))
                elif op == "rename":
                    os.rename(f, some_dir() / f"r{rng.randrange(64)}")
                elif op == "unlink":
                    f.unlink()
                elif op == "link":
                    os.link(f, f.parent / f"l{rng.randrange(1 << 20)}")
        except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError):
            continue  # raced with itself: the tree changed under a listing
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EXDEV, errno.EINVAL, errno.ENOSPC):
                raise


if __name__ == "__main__":
    if sys.argv[1] == "tree":
        tree(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    elif sys.argv[1] == "churn":
        churn(Path(sys.argv[2]), sys.argv[3].split(","), int(sys.argv[4]), int(sys.argv[5]),
              float(sys.argv[6]), Path(sys.argv[7]))
    elif sys.argv[1] == "crash":
        try:
            crash(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        except OSError as e:
            # ENOTCONN, or ECONNABORTED for a request in flight at the kill
            sys.exit(0 if e.errno in (errno.ENOTCONN, errno.ECONNABORTED) else f"workload: {e}")
