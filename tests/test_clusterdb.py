"""The cluster's grant protocol against a real PostgreSQL (started by the
tests): the schema, and the invariant — the grants for a bucket never add up
to more than its limit, however many nodes ask at once."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from ironfs import clusterdb, grants
from ironfs.bench_s3 import free_port
from tests.pgserver import PostgreSQL, cluster_database

MiB = 1 << 20


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgreSQL]:
    with cluster_database() as server:
        yield server


def test_schema_init_is_idempotent_and_refuses_a_newer_one(pg: PostgreSQL) -> None:
    conn = clusterdb.connect(pg.dsn)
    try:
        assert clusterdb.init_schema(conn) == clusterdb.SCHEMA_VERSION  # already there
        clusterdb.check_schema(conn)
        with conn.transaction():
            conn.execute("UPDATE ironfs_schema SET version = %s", (clusterdb.SCHEMA_VERSION + 1,))
        with pytest.raises(clusterdb.SchemaError):
            clusterdb.init_schema(conn)
        with pytest.raises(clusterdb.SchemaError):
            clusterdb.check_schema(conn)
        with conn.transaction():
            conn.execute("UPDATE ironfs_schema SET version = %s", (clusterdb.SCHEMA_VERSION,))
    finally:
        conn.close()


def test_grant_policy_keeps_the_sum_within_the_limit() -> None:
    limit = 100 * MiB
    assert grants.grant_for(None, 0, 0, 5, 3, grants.BYTES) is None
    first = grants.grant_for(limit, 0, 0, 10 * MiB, 3, grants.BYTES)
    assert first is not None and 10 * MiB < first <= limit
    near = grants.grant_for(limit, limit - 3 * MiB, 0, 0, 3, grants.BYTES)
    assert near == grants.BYTES.smallest  # near the limit: small pieces
    assert grants.grant_for(limit, limit - 3 * MiB, 0, 5 * MiB, 3, grants.BYTES) == 3 * MiB  # short
    assert grants.grant_for(limit, limit + 1, 7, 0, 3, grants.BYTES) == 0  # others hold it all
    assert grants.released(5, 9) == 5 and grants.released(9, 5) == 5 and grants.released(1, None) is None


def test_nodes_asking_at_once_never_hold_more_than_the_limit(pg: PostgreSQL) -> None:
    """Six nodes, each with its own connection, use their grants and ask for
    more at random; the sum of the grants is checked after every step, and the
    bucket is filled to its limit exactly once they give back what they hold."""
    limit, node_count = 50 * MiB, 6
    admin = clusterdb.connect(pg.dsn)
    clusterdb.set_limits(admin, "bucket", "shared", limit, None)
    used = {f"n{i}": 0 for i in range(node_count)}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def node(name: str, seed: int) -> None:
        rng = random.Random(seed)
        conn = clusterdb.connect(pg.dsn)
        try:
            held = 0
            for _ in range(60):
                want = rng.randrange(1, 3 * MiB)
                if used[name] + want > held:  # past the grant: ask (the hot path never does)
                    grant, _ = clusterdb.acquire(conn, name, "bucket", "shared", used[name], 0, want, 0)
                    assert grant.bytes is not None
                    held = grant.bytes
                if used[name] + want <= held:
                    with lock:
                        used[name] += want
                elif rng.random() < 0.5:  # refused: give back what is idle, as a node would
                    held = clusterdb.release(conn, name, "bucket", "shared", used[name], 0).bytes or 0
        except BaseException as e:
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=node, args=(f"n{i}", i)) for i in range(node_count)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        held = sum(r.grant.bytes or 0 for r in clusterdb.grant_rows(admin) if r.name == "shared")
        assert held <= limit
    for t in threads:
        t.join()
    assert not errors, errors
    rows = [r for r in clusterdb.grant_rows(admin) if r.name == "shared"]
    assert sum(r.grant.bytes or 0 for r in rows) <= limit
    assert sum(used.values()) <= limit
    for r in rows:  # usage as last reported (at each ask): never ahead of the node
        assert r.used_bytes <= used[r.node] <= (r.grant.bytes or 0)
    # Everyone gives back what is idle; one node then takes the rest, to the byte.
    for name in used:
        conn = clusterdb.connect(pg.dsn)
        clusterdb.release(conn, name, "bucket", "shared", used[name], 0)
        conn.close()
    rest = limit - sum(used.values())
    grant, _ = clusterdb.acquire(admin, "n0", "bucket", "shared", used["n0"], 0, rest, 0)
    assert grant.bytes == limit - sum(u for n, u in used.items() if n != "n0")
    admin.close()


def test_an_administrator_releases_a_dead_nodes_grant(pg: PostgreSQL) -> None:
    conn = clusterdb.connect(pg.dsn)
    try:
        clusterdb.set_limits(conn, "bucket", "dead", 10 * MiB, 100)
        grant, limits = clusterdb.acquire(conn, "gone", "bucket", "dead", 1 * MiB, 3, 0, 0)
        assert limits == clusterdb.LimitRow(10 * MiB, 100, 0)
        assert grant.bytes is not None and grant.bytes > 1 * MiB
        assert clusterdb.acquire(conn, "alive", "bucket", "dead", 0, 0, 9 * MiB, 0)[0].bytes \
            == 10 * MiB - grant.bytes  # the dead node's headroom is not there for the taking
        assert clusterdb.release_node(conn, "gone") == 1
        rows = {r.node: r for r in clusterdb.grant_rows(conn) if r.name == "dead"}
        assert rows["gone"].grant == clusterdb.Grant(1 * MiB, 3)
        assert clusterdb.acquire(conn, "alive", "bucket", "dead", 0, 0, 9 * MiB, 0)[0].bytes == 9 * MiB
    finally:
        conn.close()


def test_unlimited_buckets_need_no_grant(pg: PostgreSQL) -> None:
    conn = clusterdb.connect(pg.dsn)
    try:
        assert clusterdb.acquire(conn, "n0", "bucket", "free", 5, 1, 100, 1) == (
            clusterdb.Grant(None, None), clusterdb.UNLIMITED)
        first = clusterdb.LimitRow(3 * MiB, None, 0)  # the first node to serve it brings its own
        assert clusterdb.acquire(conn, "n0", "bucket", "new", 0, 0, 1, 0, first)[1] == first
        other = clusterdb.LimitRow(9 * MiB, None, 0)
        assert clusterdb.acquire(conn, "n1", "bucket", "new", 0, 0, 1, 0, other)[1] == first
    finally:
        conn.close()


def test_cluster_command(pg: PostgreSQL) -> None:
    def ironfs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ironfs", "cluster", *args],
                              capture_output=True, text=True, timeout=60)

    done = ironfs("init", pg.dsn)
    assert done.returncode == 0 and "already there" in done.stdout, done
    conn = clusterdb.connect(pg.dsn)
    try:
        clusterdb.set_limits(conn, "bucket", "cli", 10 * MiB, None)
        clusterdb.acquire(conn, "lost", "bucket", "cli", 2 * MiB, 0, 0, 0)
    finally:
        conn.close()
    shown = ironfs("grants", "--dsn", pg.dsn)
    assert shown.returncode == 0 and "lost" in shown.stdout
    released = ironfs("release", "lost", "--dsn", pg.dsn)
    assert released.returncode == 0 and "1 grant(s)" in released.stdout, released
    rows = [r for r in _rows(pg) if r.node == "lost"]
    assert rows[0].grant.bytes == 2 * MiB
    refused = ironfs("init", f"postgresql://ironfs@127.0.0.1:{free_port()}/postgres")
    assert refused.returncode == 1 and refused.stderr.startswith("ironfs cluster:"), refused
    assert ironfs("release").returncode == 2  # NODE and --dsn missing


def _rows(pg: PostgreSQL) -> list[clusterdb.Row]:
    conn = clusterdb.connect(pg.dsn)
    try:
        return clusterdb.grant_rows(conn)
    finally:
        conn.close()
