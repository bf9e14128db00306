"""``ironfs cluster init DSN``, ``ironfs cluster release NODE --dsn DSN``,
``ironfs cluster grants|report|stats --dsn DSN`` (``ironfs report --cluster DSN``
and ``ironfs stats --cluster DSN`` are the same reports): the cluster's
database, for operators.

Exit status: 0 done, 1 the database refused or could not be reached, 2 bad
command line.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from . import clusterdb
from .stats import COUNTERS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ironfs cluster",
                                description="The PostgreSQL database shared by a cluster of ironfs nodes.")
    sub = p.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the schema (idempotent; refuses a newer one)")
    init.add_argument("dsn", metavar="DSN", help="postgresql://user@host:port/database")
    release = sub.add_parser(
        "release", help="give back a dead node's grants (each falls to the usage it last reported); "
                        "only for a node that is down")
    release.add_argument("node", metavar="NODE")
    release.add_argument("--dsn", required=True)
    show = sub.add_parser("grants", help="every node's grant and usage, per bucket and account")
    show.add_argument("--dsn", required=True)
    report = sub.add_parser("report", help="usage against limits, cluster totals and per node")
    report.add_argument("--dsn", required=True)
    stats = sub.add_parser("stats", help="a month's operation counters, cluster totals and per node")
    stats.add_argument("--dsn", required=True)
    stats.add_argument("--month", help="YYYY-MM (default: this month, UTC)")
    for sp in (report, stats, show):
        sp.add_argument("--json", action="store_true", help="print JSON")
    return p


def cluster_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        conn = clusterdb.connect(args.dsn)
    except ImportError:
        print("ironfs cluster: psycopg is not installed (pip install 'ironfs[cluster]')", file=sys.stderr)
        return 1
    except Exception as e:  # psycopg.OperationalError and friends: say it, change nothing
        print(f"ironfs cluster: {e}".strip(), file=sys.stderr)
        return 1
    try:
        if args.command == "init":
            before = clusterdb.init_schema(conn)
            print(f"schema {clusterdb.SCHEMA_VERSION}" + (" (already there)" if before else " created"))
        elif args.command == "release":
            n = clusterdb.release_node(conn, args.node)
            print(f"{args.node}: {n} grant(s) released to their reported usage")
        elif args.command == "grants":
            rows = clusterdb.grant_rows(conn)
            if args.json:
                print(orjson.dumps([_row_doc(r) for r in rows]).decode())
                return 0
            print(f"{'kind':8} {'name':20} {'node':12} {'granted bytes':>15} {'used bytes':>15} "
                  f"{'granted objs':>12} {'used objs':>10}")
            for r in rows:
                print(f"{r.kind:8} {r.name:20} {r.node:12} {_n(r.grant.bytes):>15} {r.used_bytes:>15} "
                      f"{_n(r.grant.objects):>12} {r.used_objects:>10}")
        elif args.command == "report":
            _report(conn, args.json)
        else:
            _stats(conn, args.month or datetime.now(UTC).strftime("%Y-%m"), args.json)
    except clusterdb.SchemaError as e:
        print(f"ironfs cluster: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        print(f"ironfs cluster: {e}".strip(), file=sys.stderr)
        return 1
    finally:
        conn.close()
    return 0


def _n(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def _row_doc(r: clusterdb.Row) -> dict[str, Any]:
    return {"kind": r.kind, "name": r.name, "node": r.node, "granted_bytes": r.grant.bytes,
            "granted_objects": r.grant.objects, "used_bytes": r.used_bytes,
            "used_objects": r.used_objects}


def _report(conn: Any, as_json: bool) -> None:
    """Per bucket and account: the limit, the cluster's usage, and each node's."""
    limits = clusterdb.limit_rows(conn)
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for r in clusterdb.grant_rows(conn):
        limit = limits.get((r.kind, r.name), clusterdb.UNLIMITED)
        doc = docs.setdefault((r.kind, r.name), {
            "kind": r.kind, "name": r.name, "max_bytes": limit.max_bytes,
            "max_objects": limit.max_objects, "used_bytes": 0, "objects": 0, "nodes": {}})
        doc["used_bytes"] += r.used_bytes
        doc["objects"] += r.used_objects
        doc["nodes"][r.node] = {"used_bytes": r.used_bytes, "objects": r.used_objects,
                                "granted_bytes": r.grant.bytes}
    if as_json:
        print(orjson.dumps(list(docs.values())).decode())
        return
    print(f"{'kind':8} {'name':20} {'node':12} {'used bytes':>15} {'objects':>9} {'max bytes':>15}")
    for doc in docs.values():
        print(f"{doc['kind']:8} {doc['name']:20} {'(cluster)':12} {doc['used_bytes']:>15} "
              f"{doc['objects']:>9} {_n(doc['max_bytes']):>15}")
        for node, n in sorted(doc["nodes"].items()):
            print(f"{'':8} {'':20} {node:12} {n['used_bytes']:>15} {n['objects']:>9}")


def _stats(conn: Any, month: str, as_json: bool) -> None:
    """A month's counters per bucket: the cluster's sums, and each node's."""
    docs: dict[str, dict[str, Any]] = {}
    for bucket, node, counters in clusterdb.counter_rows(conn, month):
        doc = docs.setdefault(bucket, {"bucket": bucket, "month": month, "total": {}, "nodes": {}})
        for k, v in counters.items():
            doc["total"][k] = doc["total"].get(k, 0) + v
        doc["nodes"][node] = counters
    if as_json:
        print(orjson.dumps(list(docs.values())).decode())
        return
    for doc in docs.values():
        print(f"{doc['bucket']} {month}")
        for name in COUNTERS:
            per_node = ", ".join(f"{node} {c.get(name, 0)}" for node, c in sorted(doc["nodes"].items()))
            print(f"  {name:18} {doc['total'].get(name, 0):>14}  ({per_node})")
