"""A mixed S3 workload with its own tally of what the clients did.

Eight clients (threads, one boto3 client each) make seeded random requests
against one bucket near its limit: PUTs of 1 KiB–3 MiB (new keys and
overwrites), whole and range GETs, HEADs, LISTs, DELETEs and multipart uploads.
Each client works under its own prefix, so it knows which of its keys exist and
the tally of successful requests is exact whatever the interleaving.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

KiB, MiB = 1 << 10, 1 << 20
PART = 5 * MiB

#: (operation, weight)
MIX = (("put", 30), ("overwrite", 8), ("get", 14), ("range_get", 4), ("head", 12),
       ("list", 10), ("delete", 10), ("multipart", 2))


@dataclass
class Tally:
    """What the clients did, counted the way the month's file counts it."""

    counters: Counter[str] = field(default_factory=Counter)
    refused: int = 0  # requests answered with an error because of the quota
    bytes_written: int = 0  # bytes of uploads that succeeded
    bytes_read: int = 0  # bytes of whole-object GETs
    range_bytes: int = 0  # bytes asked by range GETs
    ranges: int = 0
    # One client's HEADs, one after the other, of every key that begins with
    # the prefix their keys share, in name order: the very stats of a LIST of
    # that prefix (README).  How many such runs, and the HEADs in them.
    like_lists: int = 0
    heads_like_lists: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, counter: str, n: int = 1) -> None:
        with self.lock:
            self.counters[counter] += n


class Client:
    def __init__(self, s3: Any, bucket: str, index: int, seed: int, tally: Tally) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = f"c{index}/"
        self.rng = random.Random(seed * 100 + index)
        self.tally = tally
        self.keys: dict[str, int] = {}  # key -> size, the keys that exist
        self.serial = 0
        self.heads: list[str] = []  # the keys of the HEADs since its last other request

    def run(self, requests: int) -> None:
        ops = [op for op, _ in MIX]
        weights = [w for _, w in MIX]
        for _ in range(requests):
            op = self.rng.choices(ops, weights)[0]
            if op not in ("put", "multipart", "list") and not self.keys:
                op = "put"
            if op != "head":
                self._tally_heads_like_a_list()
            getattr(self, op)()
        self._tally_heads_like_a_list()

    def _tally_heads_like_a_list(self) -> None:
        """Tallies the longest run of the HEADs just made that looks like a
        LIST: two or more keys ascending, every key of their common prefix."""
        heads, self.heads = self.heads, []
        for n in range(len(heads), 1, -1):
            for i in range(len(heads) - n + 1):
                run = heads[i:i + n]
                prefix = os.path.commonprefix(run)
                if run == sorted(set(run)) and {k for k in self.keys if k.startswith(prefix)} == set(run):
                    with self.tally.lock:
                        self.tally.like_lists += 1
                        self.tally.heads_like_lists += n
                    return

    def _new_key(self) -> str:
        self.serial += 1
        return f"{self.prefix}k{self.serial}"

    def _existing(self) -> str:
        return self.rng.choice(sorted(self.keys))

    def _upload(self, key: str) -> None:
        size = self.rng.randrange(KiB, 3 * MiB)
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=self.rng.randbytes(size))
        except ClientError:
            with self.tally.lock:
                self.tally.refused += 1
            return  # a refused overwrite leaves the old object in place
        self.keys[key] = size
        self.tally.add("put_count")
        with self.tally.lock:
            self.tally.bytes_written += size

    def put(self) -> None:
        self._upload(self._new_key())

    def overwrite(self) -> None:
        self._upload(self._existing() if self.keys else self._new_key())

    def get(self) -> None:
        key = self._existing()
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        assert len(body) == self.keys[key]
        self.tally.add("get_count")
        with self.tally.lock:
            self.tally.bytes_read += len(body)

    def range_get(self) -> None:
        key = self._existing()
        size = self.keys[key]
        start = self.rng.randrange(size)
        end = min(size - 1, start + self.rng.randrange(1, 256 * KiB))
        body = self.s3.get_object(Bucket=self.bucket, Key=key,
                                  Range=f"bytes={start}-{end}")["Body"].read()
        assert len(body) == end - start + 1
        self.tally.add("get_count")
        with self.tally.lock:
            self.tally.range_bytes += len(body)
            self.tally.ranges += 1

    def head(self) -> None:
        key = self._existing()
        assert self.s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"] == self.keys[key]
        self.tally.add("head_count")
        self.heads.append(key)

    def list(self) -> None:
        got = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix)
        names = {c["Key"] for c in got.get("Contents", [])}
        assert names == set(self.keys), (names, set(self.keys))
        if len(self.keys) == 1:  # the same single stat as a HEAD of that object
            self.tally.add("list_of_one")
        elif self.keys:  # a LIST of an empty prefix touches nothing on disk: uncountable
            self.tally.add("list_count")

    def delete(self) -> None:
        key = self._existing()
        self.s3.delete_object(Bucket=self.bucket, Key=key)
        del self.keys[key]
        self.tally.add("delete_count")

    def multipart(self) -> None:
        key = self._new_key()
        upload = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        sizes = (PART, self.rng.randrange(KiB, MiB))
        parts = []
        try:
            for n, size in enumerate(sizes, start=1):
                etag = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload,
                                           PartNumber=n, Body=self.rng.randbytes(size))["ETag"]
                parts.append({"ETag": etag, "PartNumber": n})
            self.s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload,
                                              MultipartUpload={"Parts": parts})
        except ClientError:
            with self.tally.lock:
                self.tally.refused += 1
            try:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            except ClientError:
                pass
            return
        self.keys[key] = sum(sizes)
        self.tally.add("multipart_count")
        with self.tally.lock:
            self.tally.bytes_written += sum(sizes)


def run_mixed(clients: list[Any], bucket: str, seed: int, requests: int) -> Tally:
    """Runs one client per boto3 client in *clients*, *requests* each; returns the tally."""
    tally = Tally()
    errors: list[BaseException] = []

    def work(i: int, s3: Any) -> None:
        try:
            Client(s3, bucket, i, seed, tally).run(requests)
        except BaseException as e:  # reported by the caller, not lost in a thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, s3)) for i, s3 in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return tally
