"""Three mounts over separate backing directories, one PostgreSQL: one limit
for a bucket that lives on all three."""

from __future__ import annotations

import errno
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from ironfs import clusterdb
from tests.mounting import Mount, clear_mount, ledger, require_fuse, scan, start_mount, wait_for
from tests.pgserver import PostgreSQL, cluster_database

KiB, MiB = 1 << 10, 1 << 20
NODES = 3


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgreSQL]:
    with cluster_database() as server:
        yield server


@pytest.fixture
def nodes(pg: PostgreSQL, tmp_path: Path) -> Iterator[list[Mount]]:
    mounts: list[Mount] = []
    try:
        for i in range(NODES):
            mounts.append(start_mount(tmp_path / f"backing{i}", tmp_path / f"mnt{i}",
                                      options=[f"cluster={pg.dsn}", f"node=n{i}",
                                               "flush_interval_ms=200"]))
        yield mounts
    finally:
        for m in mounts:
            m.stop()


def grants_held(pg: PostgreSQL, name: str) -> int:
    conn = clusterdb.connect(pg.dsn)
    try:
        return sum(r.grant.bytes or 0 for r in clusterdb.grant_rows(conn) if r.name == name)
    finally:
        conn.close()


def writer(mnt: Path, worker: int, stop: threading.Event, out: dict[str, int],
           bucket: str = "shared") -> None:
    """Files of 16-256 KiB, written whole; a refused one is removed (as an S3
    server removes a refused upload) and the next one is smaller."""
    rng = random.Random(worker)
    size, n = 256 * KiB, 0
    while not stop.is_set():
        path = mnt / bucket / f"w{worker}-{n}"
        n += 1
        want = rng.randrange(16 * KiB, size + 1)
        try:
            with open(path, "wb") as f:
                f.write(b"x" * want)
            out["written"] = out.get("written", 0) + want
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            out["refused"] = out.get("refused", 0) + 1
            path.unlink(missing_ok=True)
            if size <= 16 * KiB:
                return
            size //= 2


@dataclass
class Fill:
    used: list[int]  # per node, at the end
    highest: int  # the highest total usage sampled while writing
    most_held: int  # the most the nodes held in grants, sampled (0 if not sampled)
    first_refusal_at: int  # the total sampled when a refusal was first seen


def fill(pg: PostgreSQL, nodes: list[Mount], buckets: list[str], grants_of: str | None) -> Fill:
    """Eight writers per node into buckets[i] on node i until each is refused
    at its smallest size; the total usage (and the grants held for *grants_of*)
    sampled every 20 ms meanwhile."""
    stop = threading.Event()
    results: list[dict[str, int]] = [{} for _ in range(len(nodes) * 8)]
    totals: list[int] = []
    first_refusal_at: list[int] = []
    held: list[int] = []

    def sample() -> None:
        while not stop.is_set():
            totals.append(sum(ledger(m.mnt, b)[0] for m, b in zip(nodes, buckets, strict=True)))
            if grants_of is not None:
                held.append(grants_held(pg, grants_of))
            if not first_refusal_at and any(r.get("refused") for r in results):
                first_refusal_at.append(totals[-1])
            time.sleep(0.02)

    threads = [threading.Thread(target=writer, args=(nodes[i // 8].mnt, i, stop, results[i],
                                                     buckets[i // 8]))
               for i in range(len(nodes) * 8)]
    sampler = threading.Thread(target=sample)
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    sampler.join()
    used = [ledger(m.mnt, b)[0] for m, b in zip(nodes, buckets, strict=True)]
    print(f"per node {used}; total {sum(used)}; first refusal at {first_refusal_at}; "
          f"highest sampled {max(totals)}; grants held at most {max(held, default=None)}; "
          f"refused {sum(r.get('refused', 0) for r in results)}")
    return Fill(used, max(totals), max(held, default=0), first_refusal_at[0] if first_refusal_at else 0)


def test_one_limit_across_three_nodes_is_never_overshot(pg: PostgreSQL, nodes: list[Mount]) -> None:
    limit = 32 * MiB
    for m in nodes:
        (m.mnt / "shared").mkdir()
    os.setxattr(nodes[0].mnt / "shared", "user.ironfs.max_bytes", str(limit).encode())
    wait_for(lambda: all(int(os.getxattr(m.mnt / "shared", "user.ironfs.max_bytes")) == limit
                         for m in nodes), timeout=15)
    done = fill(pg, nodes, ["shared"] * NODES, grants_of="shared")
    used = done.used
    assert done.highest <= limit and done.most_held <= limit and sum(used) <= limit
    assert sum(used) >= 0.99 * limit and done.first_refusal_at >= 0.99 * limit
    for m in nodes:
        assert ledger(m.mnt, "shared") == scan(m.backing, "shared")
    # The cluster's figures: usage and counters of every node, in the database.
    wait_for(lambda: settled(pg, nodes, "shared"), timeout=30)
    report = orjson.loads(ironfs("report", "--cluster", pg.dsn, "--json"))
    shared = next(d for d in report if d["name"] == "shared")
    assert (shared["used_bytes"], shared["max_bytes"]) == (sum(used), limit)
    assert {n: d["used_bytes"] for n, d in shared["nodes"].items()} == {
        f"n{i}": u for i, u in enumerate(used)}
    local = [orjson.loads(os.getxattr(m.mnt / "shared", "user.ironfs.stats")) for m in nodes]
    wait_for(lambda: _cluster_puts(pg) == sum(s["put_count"] for s in local), timeout=10)
    stats = next(d for d in orjson.loads(ironfs("stats", "--cluster", pg.dsn, "--json"))
                 if d["bucket"] == "shared")
    for name in ("put_count", "delete_count", "bytes_written", "quota_rejections"):
        assert stats["total"][name] == sum(s[name] for s in local), name


def ironfs(*args: str) -> bytes:
    return subprocess.run([sys.executable, "-m", "ironfs", *args], check=True,
                          capture_output=True, timeout=60).stdout


def _cluster_puts(pg: PostgreSQL) -> int:
    stats = orjson.loads(ironfs("stats", "--cluster", pg.dsn, "--json"))
    return sum(d["total"].get("put_count", 0) for d in stats if d["bucket"] == "shared")


def cluster_rows(pg: PostgreSQL, name: str) -> dict[str, clusterdb.Row]:
    conn = clusterdb.connect(pg.dsn)
    try:
        return {r.node: r for r in clusterdb.grant_rows(conn) if r.name == name}
    finally:
        conn.close()


def settled(pg: PostgreSQL, nodes: list[Mount], name: str) -> bool:
    """Every node's usage in the database is its rescan, and no node holds more
    than it uses (idle grants given back)."""
    rows = cluster_rows(pg, name)
    for i, m in enumerate(nodes):
        row = rows.get(f"n{i}")
        used = scan(m.backing, name)[0]
        if row is None:
            if used:
                return False
            continue
        if row.used_bytes != used or (row.grant.bytes is not None and row.grant.bytes != used):
            return False
    return True


def test_a_node_killed_mid_write_settles_when_it_restarts(pg: PostgreSQL, nodes: list[Mount],
                                                          tmp_path: Path) -> None:
    limit = 64 * MiB
    for m in nodes:
        (m.mnt / "killed").mkdir()
    os.setxattr(nodes[0].mnt / "killed", "user.ironfs.max_bytes", str(limit).encode())
    stop = threading.Event()
    out: dict[str, int] = {}
    victim = threading.Thread(target=writer_into, args=(nodes[1].mnt / "killed", stop, out))
    victim.start()
    time.sleep(1.5)
    nodes[1].stop(signal.SIGKILL)  # mid-write: its grant stays in the database
    stop.set()
    victim.join(timeout=30)
    clear_mount(nodes[1].mnt)
    held = cluster_rows(pg, "killed")["n1"]
    assert held.grant.bytes is not None and held.grant.bytes >= scan(nodes[1].backing, "killed")[0]
    nodes[1] = start_mount(nodes[1].backing, nodes[1].mnt,
                           options=[f"cluster={pg.dsn}", "node=n1", "flush_interval_ms=200"])
    wait_for(lambda: settled(pg, nodes, "killed"), timeout=30)
    rows = cluster_rows(pg, "killed")
    assert sum(r.used_bytes for r in rows.values()) == sum(scan(m.backing, "killed")[0] for m in nodes)
    for m in nodes:
        assert ledger(m.mnt, "killed") == scan(m.backing, "killed")


def writer_into(directory: Path, stop: threading.Event, out: dict[str, int]) -> None:
    n = 0
    while not stop.is_set():
        try:
            (directory / f"f{n}").write_bytes(b"k" * 200 * KiB)
        except OSError:
            return  # the mount is gone
        n += 1


def test_database_gone_fails_closed_and_settles_when_back(pg: PostgreSQL, nodes: list[Mount]) -> None:
    limit = 256 * MiB
    for m in nodes:
        (m.mnt / "outage").mkdir()
    os.setxattr(nodes[0].mnt / "outage", "user.ironfs.max_bytes", str(limit).encode())
    for m in nodes:
        (m.mnt / "outage" / "before").write_bytes(b"b" * 100 * KiB)
    pg.stop("immediate")
    try:
        refused = 0
        for m in nodes:  # within what each holds, writes go on; beyond it, refused
            for n in range(400):
                try:
                    (m.mnt / "outage" / f"during{n}").write_bytes(b"d" * 1 * MiB)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    refused += 1
                    break
            (m.mnt / "outage" / "before").unlink()  # deletes always work
        assert refused == NODES  # each node stopped at its grant, the database being gone
        assert sum(ledger(m.mnt, "outage")[0] for m in nodes) <= limit
    finally:
        pg.start()
    wait_for(lambda: settled(pg, nodes, "outage"), timeout=30)
    assert sum(r.grant.bytes or 0 for r in cluster_rows(pg, "outage").values()) <= limit


def test_one_account_over_buckets_on_different_nodes(pg: PostgreSQL, nodes: list[Mount]) -> None:
    """Bucket team-<i> lives on node i only; account "team" holds all three."""
    limit = 24 * MiB
    for i, m in enumerate(nodes):
        (m.mnt / f"team-{i}").mkdir()
        doc = {"max_bytes": limit, "buckets": [f"team-{i}"]}
        os.setxattr(m.mnt, "user.ironfs.account.team", orjson.dumps(doc))
    buckets = [f"team-{i}" for i in range(NODES)]
    done = fill(pg, nodes, buckets, grants_of=None)
    assert done.highest <= limit and sum(done.used) <= limit
    # (a first write needs two grants, its bucket's and its account's: not refused)
    assert sum(done.used) >= 0.99 * limit and done.first_refusal_at >= 0.99 * limit
    for m, bucket in zip(nodes, buckets, strict=True):
        assert ledger(m.mnt, bucket) == scan(m.backing, bucket)


def test_a_limit_set_on_one_node_reaches_the_others_within_a_second(pg: PostgreSQL,
                                                                  nodes: list[Mount]) -> None:
    for m in nodes:
        (m.mnt / "announced").mkdir()
    os.setxattr(nodes[2].mnt / "announced", "user.ironfs.max_bytes", b"5MiB")
    started = time.monotonic()
    wait_for(lambda: all(os.getxattr(m.mnt / "announced", "user.ironfs.max_bytes") == b"5242880"
                         for m in nodes), timeout=5)
    took = time.monotonic() - started
    print(f"limit on every node after {took:.3f} s")
    assert took < 1.0
    with pytest.raises(OSError) as refused:  # and it holds for the sum over the nodes
        for i, m in enumerate(nodes):
            (m.mnt / "announced" / f"f{i}").write_bytes(b"a" * 2 * MiB)
    assert refused.value.errno == errno.ENOSPC
    assert sum(ledger(m.mnt, "announced")[0] for m in nodes) <= 5 * MiB


class SlowLink:
    """A TCP proxy to PostgreSQL that holds every chunk for *delay* seconds."""

    def __init__(self, port: int, delay: float) -> None:
        self.upstream, self.delay = port, delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closing = True
        self.server.close()


def small_files(directory: Path, count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        (directory / f"s{n}").write_bytes(b"s" * 4096)
    return time.perf_counter() - started


def test_a_slow_link_does_not_slow_writes_that_fit_the_grant(pg: PostgreSQL, nodes: list[Mount],
                                                            tmp_path: Path) -> None:
    link = SlowLink(pg.port, 0.1)  # 100 ms each way: 200 ms and more per transaction
    slow = None
    try:
        slow = start_mount(tmp_path / "backing-slow", tmp_path / "mnt-slow",
                           options=[f"cluster=postgresql://ironfs@127.0.0.1:{link.port}/postgres",
                                    "node=slow", "flush_interval_ms=200"])
        for m in (nodes[0], slow):
            (m.mnt / "roomy").mkdir()
        os.setxattr(nodes[0].mnt / "roomy", "user.ironfs.max_bytes", b"4GiB")
        wait_for(lambda: os.getxattr(slow.mnt / "roomy", "user.ironfs.max_bytes") == b"4294967296",
                 timeout=10)
        for m in (nodes[0], slow):  # the first write asks for a grant: slow on the slow link
            (m.mnt / "roomy" / "warm").write_bytes(b"w" * 4096)
        fast_s, slow_s = [], []
        for _ in range(3):  # alternating, on this noisy machine
            fast_s.append(small_files(nodes[0].mnt / "roomy", 300))
            slow_s.append(small_files(slow.mnt / "roomy", 300))
        ratio = min(slow_s) / min(fast_s)
        print(f"300 small files: direct link {min(fast_s):.3f} s, slow link {min(slow_s):.3f} s "
              f"(ratio {ratio:.2f})")
        # A transaction per write would take 60 s; noise on this 2-core VM is up to 2x.
        assert ratio < 2.0 and min(slow_s) < 300 * 0.2 / 20
    finally:
        if slow is not None:
            slow.stop()
        link.close()


def test_quick_bench_compares_a_node_with_a_plain_mount(pg: PostgreSQL, tmp_path: Path) -> None:
    """`ironfs bench --cluster` must not rot: every paired figure is there."""
    require_fuse()
    r = subprocess.run([sys.executable, "-m", "ironfs", "bench", str(tmp_path), "--quick", "--no-s3",
                        "--json", "--cluster", pg.dsn], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    paired = orjson.loads(r.stdout)["cluster_vs_plain"]
    assert set(paired) == {"create 4 KiB files", "stat", "read 4 KiB files", "unlink",
                           "seq write + fsync", "seq read, cold", "rename", "PUT pattern 4 KiB",
                           "PUT pattern 1 MiB", "PUT pattern 4 KiB, 4 writers"}
    for figure in paired.values():
        assert figure["pairs"] == 3 and 0 < figure["low"] <= figure["median"] <= figure["high"], figure
    assert list(tmp_path.iterdir()) == []


def test_a_service_file_listing_several_hosts_reaches_the_live_one(pg: PostgreSQL, tmp_path: Path) -> None:
    """The README's way to a highly available PostgreSQL: hosts listed in a libpq
    service file (a DSN in a mount option cannot hold a comma), the first one
    down; the node connects to the next and its limits and grants go there."""
    from ironfs.bench_s3 import free_port

    services = tmp_path / "pg_service.conf"
    services.write_text(f"[ironfs]\nhost=127.0.0.1,127.0.0.1\nport={free_port()},{pg.port}\n"
                        "user=ironfs\ndbname=postgres\ntarget_session_attrs=read-write\n"
                        "connect_timeout=2\n")
    m = start_mount(tmp_path / "backing", tmp_path / "mnt",
                    options=["cluster=postgresql:///postgres?service=ironfs", "node=svc"],
                    env={"PGSERVICEFILE": str(services)})
    try:
        (m.mnt / "served").mkdir()
        os.setxattr(m.mnt / "served", "user.ironfs.max_bytes", b"8MiB")
        (m.mnt / "served" / "a").write_bytes(b"a" * MiB)
        conn = clusterdb.connect(pg.dsn)  # the live server, directly
        try:
            wait_for(lambda: clusterdb.limit_rows(conn).get(("bucket", "served")) is not None, timeout=5)
            assert clusterdb.limit_rows(conn)[("bucket", "served")].max_bytes == 8 * MiB
            held = [r for r in clusterdb.grant_rows(conn) if r.node == "svc" and r.name == "served"]
            assert held and (held[0].grant.bytes or 0) >= MiB
        finally:
            conn.close()
    finally:
        m.stop()
