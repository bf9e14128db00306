"""The cluster's shared state in PostgreSQL: limits, each node's grants and
usage, and the statements that move grants (psycopg 3, the ``cluster`` extra).

Every change of a grant runs in one transaction that first locks the limit's
row (``SELECT … FOR UPDATE``), so two nodes asking at once are serialised and
the sum of the grants for a bucket or account never exceeds its limit
(grants.py computes each grant from what the others hold).  Blocking calls:
the mount runs them in a worker thread, never on the request loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import grants

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

#: The schema this code reads and writes; ``ironfs cluster init`` brings a
#: database to it (idempotent) and refuses a newer one.
SCHEMA_VERSION = 1

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS ironfs_schema (
           version integer NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS ironfs_limits (
           kind text NOT NULL CHECK (kind IN ('bucket', 'account')),
           name text NOT NULL,
           max_bytes bigint CHECK (max_bytes >= 0),
           max_objects bigint CHECK (max_objects >= 0),
           grace_bytes bigint NOT NULL DEFAULT 0 CHECK (grace_bytes >= 0),
           PRIMARY KEY (kind, name))""",
    """CREATE TABLE IF NOT EXISTS ironfs_grants (
           kind text NOT NULL,
           name text NOT NULL,
           node text NOT NULL,
           granted_bytes bigint,
           granted_objects bigint,
           used_bytes bigint NOT NULL DEFAULT 0,
           used_objects bigint NOT NULL DEFAULT 0,
           updated timestamptz NOT NULL DEFAULT now(),
           PRIMARY KEY (kind, name, node))""",
    """CREATE TABLE IF NOT EXISTS ironfs_counters (
           node text NOT NULL,
           bucket text NOT NULL,
           month text NOT NULL,
           counters jsonb NOT NULL,
           updated timestamptz NOT NULL DEFAULT now(),
           PRIMARY KEY (node, bucket, month))""",
]

#: NOTIFY channels: a limit changed ("kind/name"), a node asks the others to
#: give back what they do not use ("kind/name").
LIMITS_CHANNEL = "ironfs_limits"
SHRINK_CHANNEL = "ironfs_shrink"


class SchemaError(Exception):
    """The database holds another version of the schema."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What one node may hold for one bucket or account (None: unlimited)."""

    bytes: int | None
    objects: int | None


def connect(dsn: str) -> psycopg.Connection[Any]:
    import psycopg  # the optional "cluster" extra: only cluster mounts need it

    return psycopg.connect(dsn, autocommit=False, connect_timeout=5)


def init_schema(conn: psycopg.Connection[Any]) -> int:
    """Creates the tables (idempotent); returns the version found before (0: none)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('ironfs schema'))")
        for statement in _SCHEMA:
            conn.execute(statement)
        row = conn.execute("SELECT max(version) FROM ironfs_schema").fetchone()
        found = row[0] if row is not None and row[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise SchemaError(f"database schema {found} is newer than this ironfs ({SCHEMA_VERSION})")
        if found < SCHEMA_VERSION:
            conn.execute("DELETE FROM ironfs_schema")
            conn.execute("INSERT INTO ironfs_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
    return int(found)


def check_schema(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        row = conn.execute("SELECT max(version) FROM ironfs_schema").fetchone()
    found = row[0] if row is not None else None
    if found != SCHEMA_VERSION:
        raise SchemaError(f"database schema {found}, this ironfs needs {SCHEMA_VERSION}"
                          " (run: ironfs cluster init DSN)")


def set_limits(conn: psycopg.Connection[Any], kind: str, name: str, max_bytes: int | None,
               max_objects: int | None, grace_bytes: int = 0) -> None:
    """An administrator's limits, for every node (each hears of it through NOTIFY)."""
    with conn.transaction():
        conn.execute(
            """INSERT INTO ironfs_limits (kind, name, max_bytes, max_objects, grace_bytes)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (kind, name) DO UPDATE SET max_bytes = excluded.max_bytes,
                   max_objects = excluded.max_objects, grace_bytes = excluded.grace_bytes""",
            (kind, name, max_bytes, max_objects, grace_bytes))
        conn.execute("SELECT pg_notify(%s, %s)", (LIMITS_CHANNEL, f"{kind}/{name}"))


@dataclass(frozen=True, slots=True)
class LimitRow:
    """A bucket's or account's limits as the cluster knows them."""

    max_bytes: int | None
    max_objects: int | None
    grace_bytes: int = 0


UNLIMITED = LimitRow(None, None, 0)


def acquire(conn: psycopg.Connection[Any], node: str, kind: str, name: str,
            used_bytes: int, used_objects: int, want_bytes: int = 0, want_objects: int = 0,
            first: LimitRow = UNLIMITED, floor: Grant = Grant(0, 0)) -> tuple[Grant, LimitRow]:
    """This node's new grant for *kind*/*name*: its usage plus what it wants
    plus headroom, as far as the limit allows (grants.grant_for); and the
    limits it was computed from.  *first*: the limits to record if the cluster
    has none for it yet (the first node to serve it brings its own).  *floor*:
    the grant the node holds, which it may be filling meanwhile: the new one is
    not smaller while the limit allows."""
    with conn.transaction():
        conn.execute(
            """INSERT INTO ironfs_limits (kind, name, max_bytes, max_objects, grace_bytes)
               VALUES (%s, %s, %s, %s, %s) ON CONFLICT (kind, name) DO NOTHING""",
            (kind, name, first.max_bytes, first.max_objects, first.grace_bytes))
        limit = conn.execute(
            """SELECT max_bytes, max_objects, grace_bytes FROM ironfs_limits
               WHERE kind = %s AND name = %s FOR UPDATE""", (kind, name)).fetchone()
        assert limit is not None  # inserted above if it was missing
        max_bytes, max_objects, grace = limit
        others = conn.execute(
            """SELECT coalesce(sum(granted_bytes), 0), coalesce(sum(granted_objects), 0),
                      count(*) FROM ironfs_grants
               WHERE kind = %s AND name = %s AND node <> %s""", (kind, name, node)).fetchone()
        assert others is not None
        held_bytes, held_objects, other_nodes = others
        nodes = int(other_nodes) + 1
        grant = Grant(
            grants.grant_for(None if max_bytes is None else max_bytes + grace, int(held_bytes),
                             used_bytes, want_bytes, nodes, grants.BYTES, floor.bytes or 0),
            grants.grant_for(max_objects, int(held_objects), used_objects, want_objects, nodes,
                             grants.OBJECTS, floor.objects or 0))
        _store(conn, node, kind, name, grant, used_bytes, used_objects)
    return grant, LimitRow(max_bytes, max_objects, grace)


def limits_of(conn: psycopg.Connection[Any], kind: str, name: str) -> LimitRow | None:
    with conn.transaction():
        row = conn.execute(
            """SELECT max_bytes, max_objects, grace_bytes FROM ironfs_limits
               WHERE kind = %s AND name = %s""", (kind, name)).fetchone()
    return None if row is None else LimitRow(row[0], row[1], row[2])


def ask_to_give_back(conn: psycopg.Connection[Any], kind: str, name: str) -> None:
    """Every node is asked to release what it holds beyond its usage for *kind*/*name*."""
    with conn.transaction():
        conn.execute("SELECT pg_notify(%s, %s)", (SHRINK_CHANNEL, f"{kind}/{name}"))


def release(conn: psycopg.Connection[Any], node: str, kind: str, name: str,
            used_bytes: int, used_objects: int) -> Grant:
    """This node gives back what it does not use (idle, or a clean stop)."""
    with conn.transaction():
        row = conn.execute(
            """SELECT granted_bytes, granted_objects FROM ironfs_grants
               WHERE kind = %s AND name = %s AND node = %s FOR UPDATE""", (kind, name, node)).fetchone()
        held = Grant(*row) if row is not None else Grant(None, None)
        grant = Grant(grants.released(used_bytes, held.bytes), grants.released(used_objects, held.objects))
        _store(conn, node, kind, name, grant, used_bytes, used_objects)
    return grant


def _store(conn: psycopg.Connection[Any], node: str, kind: str, name: str, grant: Grant,
           used_bytes: int, used_objects: int) -> None:
    conn.execute(
        """INSERT INTO ironfs_grants (kind, name, node, granted_bytes, granted_objects,
                                      used_bytes, used_objects, updated)
           VALUES (%s, %s, %s, %s, %s, %s, %s, now())
           ON CONFLICT (kind, name, node) DO UPDATE SET
               granted_bytes = excluded.granted_bytes, granted_objects = excluded.granted_objects,
               used_bytes = excluded.used_bytes, used_objects = excluded.used_objects,
               updated = now()""",
        (kind, name, node, grant.bytes, grant.objects, used_bytes, used_objects))


def report(conn: psycopg.Connection[Any], node: str, kind: str, name: str,
           used_bytes: int, used_objects: int) -> None:
    """This node's usage of *kind*/*name*, on its flush (the grant unchanged)."""
    with conn.transaction():
        conn.execute(
            """UPDATE ironfs_grants SET used_bytes = %s, used_objects = %s, updated = now()
               WHERE kind = %s AND name = %s AND node = %s""",
            (used_bytes, used_objects, kind, name, node))


def report_counters(conn: psycopg.Connection[Any], node: str,
                    rows: list[tuple[str, str, dict[str, int]]]) -> None:
    """This node's monthly counters: (bucket, month, counters) each."""
    from psycopg.types.json import Jsonb

    with conn.transaction():
        for bucket, month, counters in rows:
            conn.execute(
                """INSERT INTO ironfs_counters (node, bucket, month, counters, updated)
                   VALUES (%s, %s, %s, %s, now())
                   ON CONFLICT (node, bucket, month) DO UPDATE SET
                       counters = excluded.counters, updated = now()""",
                (node, bucket, month, Jsonb(counters)))


def counter_rows(conn: psycopg.Connection[Any], month: str) -> list[tuple[str, str, dict[str, int]]]:
    """(bucket, node, counters) of every node for *month*."""
    with conn.transaction():
        rows = conn.execute(
            """SELECT bucket, node, counters FROM ironfs_counters WHERE month = %s
               ORDER BY bucket, node""", (month,)).fetchall()
    return [(r[0], r[1], dict(r[2])) for r in rows]


def limit_rows(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], LimitRow]:
    with conn.transaction():
        rows = conn.execute("SELECT kind, name, max_bytes, max_objects, grace_bytes FROM ironfs_limits"
                            ).fetchall()
    return {(r[0], r[1]): LimitRow(r[2], r[3], r[4]) for r in rows}


def node_grants(conn: psycopg.Connection[Any], node: str) -> list[Row]:
    """What the database says *node* holds (a restarting node settles these)."""
    return [r for r in grant_rows(conn) if r.node == node]


def release_node(conn: psycopg.Connection[Any], node: str) -> int:
    """An administrator's release of a dead node's grants (``ironfs cluster
    release NODE``): each falls to the usage it last reported.  Only for a node
    known to be down: a live node would go on writing within what it holds."""
    with conn.transaction():
        cur = conn.execute(
            """UPDATE ironfs_grants SET
                   granted_bytes = CASE WHEN granted_bytes IS NULL THEN NULL
                                        ELSE least(granted_bytes, used_bytes) END,
                   granted_objects = CASE WHEN granted_objects IS NULL THEN NULL
                                          ELSE least(granted_objects, used_objects) END,
                   updated = now()
               WHERE node = %s""", (node,))
        return cur.rowcount


@dataclass(frozen=True, slots=True)
class Row:
    """One node's grant and usage for one bucket or account."""

    kind: str
    name: str
    node: str
    grant: Grant
    used_bytes: int
    used_objects: int


def grant_rows(conn: psycopg.Connection[Any]) -> list[Row]:
    """Every grant with its usage, for ``report --cluster`` and the tests."""
    with conn.transaction():
        rows = conn.execute(
            """SELECT kind, name, node, granted_bytes, granted_objects, used_bytes, used_objects
               FROM ironfs_grants ORDER BY kind, name, node""").fetchall()
    return [Row(r[0], r[1], r[2], Grant(r[3], r[4]), r[5], r[6]) for r in rows]
