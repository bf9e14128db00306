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


if __name__ == "__main__":
    if sys.argv[1] == "crash":
        try:
            crash(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        except OSError as e:
            # ENOTCONN, or ECONNABORTED for a request in flight at the kill
            sys.exit(0 if e.errno in (errno.ENOTCONN, errno.ECONNABORTED) else f"workload: {e}")
