"""``ironfs cluster init DSN``, ``ironfs cluster release NODE --dsn DSN`` and
``ironfs cluster grants --dsn DSN``: the cluster's database, for operators.

Exit status: 0 done, 1 the database refused or could not be reached, 2 bad
command line.
"""

from __future__ import annotations

import argparse
import sys

from . import clusterdb


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
        else:
            print(f"{'kind':8} {'name':20} {'node':12} {'granted bytes':>15} {'used bytes':>15} "
                  f"{'granted objs':>12} {'used objs':>10}")
            for r in clusterdb.grant_rows(conn):
                print(f"{r.kind:8} {r.name:20} {r.node:12} {_n(r.grant.bytes):>15} {r.used_bytes:>15} "
                      f"{_n(r.grant.objects):>12} {r.used_objects:>10}")
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
