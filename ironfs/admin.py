"""``ironfs quota|account|report|reconcile``: the administrator's commands.

They talk to a live mount through its ``user.ironfs.*`` attributes, or, with
``--backing DIR``, edit the state files of an unmounted backing root (refused
while it is mounted: the lock says so).  Offline, the same Control code as the
daemon's runs on a ledger loaded from the files, and changes are written back
atomically.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from .catalog import add_accounts, attach_stats, bucket_names, read_state
from .config import Config, ConfigError, build_config
from .control import Control, ControlError
from .ledger import Bucket, Ledger
from .mountinfo import ironfs_mounts
from .scanner import scan_tree
from .state import is_locked, json_object, load_accounts, name_from_json, name_to_json, read_lock_holder
from .stats import StatsBook
from .store import StateStore
from .units import format_size

PREFIX = b"user.ironfs."
EXIT_DRIFT = 3  # reconcile found drift (and, with --fix, corrected it)


class AdminError(Exception):
    """One line for stderr; exit status 1."""


# -- where the state lives ----------------------------------------------------

class Online:
    """A live mount: every read and write goes through the daemon."""

    def __init__(self, mount: str) -> None:
        self.root = os.fsencode(mount)

    def get(self, path: bytes, field: str) -> bytes:
        try:
            return os.getxattr(path, PREFIX + field.encode())
        except OSError as e:
            raise AdminError(_why(e, field)) from None

    def set(self, path: bytes, field: str, value: bytes) -> None:
        try:
            os.setxattr(path, PREFIX + field.encode(), value)
        except OSError as e:
            raise AdminError(_why(e, field)) from None

    def bucket_path(self, bucket: str) -> bytes:
        return os.path.join(self.root, name_from_json(bucket))

    def buckets(self) -> list[dict[str, Any]]:
        rows = []
        for name in sorted(os.listdir(self.root)):
            path = os.path.join(self.root, name)
            if name.startswith(b".") or not os.path.isdir(path):
                continue
            rows.append(json_object(self.get(path, "quota")))
        return rows

    def bucket(self, bucket: str) -> dict[str, Any]:
        return json_object(self.get(self.bucket_path(bucket), "quota"))

    def set_bucket(self, bucket: str, field: str, value: str) -> None:
        self.set(self.bucket_path(bucket), field, value.encode())

    def accounts(self) -> dict[str, Any]:
        return json_object(self.get(self.root, "accounts"))

    def set_account(self, name: str, doc: dict[str, Any]) -> None:
        self.set(self.root, f"account.{name}", orjson.dumps(doc))

    def delete_account(self, name: str) -> None:
        try:
            os.removexattr(self.root, PREFIX + f"account.{name}".encode())
        except OSError as e:
            raise AdminError(_why(e, f"account {name}")) from None

    def reconcile(self, bucket: str | None, fix: bool) -> dict[str, Any]:
        request = ("fix" if fix else "check") + (f":{bucket}" if bucket else "")
        self.set(self.root, "reconcile", request.encode())
        while True:  # the daemon scans beside its requests; the report replaces "running"
            report = json_object(self.get(self.root, "reconcile"))
            if report.get("state") != "running":
                break
            time.sleep(0.1)
        if report.get("state") == "failed":
            raise AdminError(f"reconcile failed: {report.get('error')}")
        return report

    def commit(self) -> None:
        pass  # the daemon flushes


class Offline:
    """An unmounted backing root: load its files, change them, write them back."""

    def __init__(self, backing: str, cfg: Config) -> None:
        root = os.fsencode(os.path.abspath(backing))
        if not os.path.isdir(root):
            raise AdminError(f"{backing}: not a directory")
        if is_locked(root):
            raise AdminError(f"{backing} is mounted (ironfs pid {read_lock_holder(root) or '?'}); "
                             "use the mount point instead of --backing")
        self.cfg = cfg
        self.ledger = Ledger()
        self.book = StatsBook()
        for name in bucket_names(root):
            state = read_state(cfg, name, set_aside_corrupt=False)
            record = state.record
            if record is None:  # missing or corrupt: usage from a scan
                usage = scan_tree(os.path.join(root, name), cfg.profile)
                bucket = self.ledger.add(name, state.limits, usage.used_bytes, usage.objects)
            else:
                bucket = self.ledger.add(name, state.limits, record.used_bytes, record.objects)
                bucket.dirty = False
            bucket.limits_dirty = state.limits_dirty
            attach_stats(root, self.book, bucket, set_aside_corrupt=False)
        try:
            add_accounts(self.ledger, load_accounts(root))
        except ValueError as e:
            raise AdminError(f"accounts.json is corrupt: {e}") from None
        self.control = Control(cfg, self.ledger, self.book, dict)
        self.control.show_progress = True
        self.store = StateStore(root, self.ledger, self.book)

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ControlError as e:
            raise AdminError(str(e)) from None

    def _bucket(self, bucket: str) -> Bucket:
        b = self.ledger.get(name_from_json(bucket))
        if b is None:
            raise AdminError(f"no bucket {bucket!r}")
        return b

    def buckets(self) -> list[dict[str, Any]]:
        return [json_object(self.control.get_bucket(b, "quota")) for b in self.ledger]

    def bucket(self, bucket: str) -> dict[str, Any]:
        return json_object(self.control.get_bucket(self._bucket(bucket), "quota"))

    def set_bucket(self, bucket: str, field: str, value: str) -> None:
        self._call(self.control.set_bucket, self._bucket(bucket), field, value.encode(), 0)

    def accounts(self) -> dict[str, Any]:
        return json_object(self.control.get_root("accounts"))

    def set_account(self, name: str, doc: dict[str, Any]) -> None:
        self._call(self.control.set_root, f"account.{name}", orjson.dumps(doc), 0)

    def delete_account(self, name: str) -> None:
        self._call(self.control.remove_root, f"account.{name}", 0)

    def reconcile(self, bucket: str | None, fix: bool) -> dict[str, Any]:
        request = ("fix" if fix else "check") + (f":{bucket}" if bucket else "")
        self._call(self.control.set_root, "reconcile", request.encode(), 0)
        report = self.control.last_reconcile
        assert report is not None, "set by the reconcile that just ran"
        return report

    def commit(self) -> None:
        if not self.store.flush_now():
            raise AdminError("could not write the state files (see the log above)")


def _why(e: OSError, what: str) -> str:
    if e.errno in (errno.EPERM, errno.EACCES):
        return f"{what}: permission denied (root or the mount's admin_uid only)"
    if e.errno == errno.ENODATA:
        return f"{what}: not found (is this an ironfs bucket or mount root?)"
    if e.errno == errno.EINVAL:
        return f"{what}: invalid value"
    return f"{what}: {e.strerror}"


def open_target(args: argparse.Namespace) -> Online | Offline:
    if args.backing:
        try:
            cfg = build_config(args.backing, "/", [])
        except ConfigError as e:
            raise AdminError(str(e)) from None
        return Offline(args.backing, cfg)
    mount = args.mount
    if mount is None:
        mounts = ironfs_mounts()
        if len(mounts) != 1:
            raise AdminError(f"name the mount point (found {len(mounts)} ironfs mounts), "
                             "or use --backing DIR")
        mount = os.fsdecode(mounts[0])
    try:
        os.getxattr(mount, PREFIX + b"accounts")
    except OSError:
        raise AdminError(f"{mount} is not a live ironfs mount (use --backing DIR offline)") from None
    return Online(mount)


def split_target(path_or_bucket: str, args: argparse.Namespace) -> tuple[str, str]:
    """``/s3/photos`` → (mount ``/s3``, bucket ``photos``); a bare name with --backing."""
    if args.backing:
        return args.backing, path_or_bucket
    path = os.path.abspath(path_or_bucket)
    return os.path.dirname(path), os.path.basename(path)


# -- output -------------------------------------------------------------------------

def emit(doc: Any, as_json: bool, table: str) -> None:
    sys.stdout.write((orjson.dumps(doc).decode() if as_json else table) + "\n")


def pct(used: int, limit: int | None) -> str:
    return "-" if not limit else f"{100 * used / limit:.1f}%"


def columns(lines: Sequence[tuple[str, ...]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def report_table(rows: list[dict[str, Any]]) -> str:
    head = ("bucket", "account", "used", "soft", "hard", "grace", "objects", "max obj", "% used",
            "state")
    lines = [head]
    for r in rows:
        lines.append((r["bucket"], r.get("account") or "-", format_size(r["used_bytes"]),
                      format_size(r["soft_limit"]), format_size(r["max_bytes"]),
                      format_size(r["grace_bytes"]), str(r["objects"]),
                      "none" if r["max_objects"] is None else str(r["max_objects"]),
                      pct(r["used_bytes"], r["max_bytes"]), r["state"]))
    return columns(lines)


def account_table(accounts: dict[str, Any]) -> str:
    lines = [("account", "used", "max", "objects", "max obj", "% used", "state", "buckets")]
    for name, a in accounts.items():
        lines.append((name, format_size(a["used_bytes"]), format_size(a["max_bytes"]),
                      str(a["objects"]), "none" if a["max_objects"] is None else str(a["max_objects"]),
                      pct(a["used_bytes"], a["max_bytes"]), a["state"], ",".join(a["buckets"]) or "-"))
    return columns(lines)


def reconcile_table(report: dict[str, Any]) -> str:
    out = []
    for r in report["buckets"]:
        drift = r["drift_bytes"] or r["drift_objects"]
        out.append(f"{r['bucket']}: ledger {r['ledger_bytes']} B / {r['ledger_objects']} objects, "
                   f"scan {r['scan_bytes']} B / {r['scan_objects']} objects"
                   + (f", drift {r['drift_bytes']:+d} B / {r['drift_objects']:+d} objects"
                      + (" (fixed)" if report["fixed"] else "") if drift else ", ok"))
    for a in report["accounts"]:
        if a["drift_bytes"] or a["drift_objects"]:
            out.append(f"account {a['account']}: drift {a['drift_bytes']:+d} B / "
                       f"{a['drift_objects']:+d} objects")
    out.append("drift found" + (" and fixed" if report["fixed"] else "")
               if report["drift"] else "no drift")
    return "\n".join(out)


# -- commands ---------------------------------------------------------------------------

def cmd_quota(args: argparse.Namespace) -> int:
    root, bucket = split_target(args.target, args)
    target = open_target(argparse.Namespace(backing=args.backing, mount=root))
    if args.action == "set":
        if not args.settings:
            raise AdminError("nothing to set: give FIELD=VALUE, e.g. max_bytes=10GiB")
        for setting in args.settings:
            field, sep, value = setting.partition("=")
            if not sep:
                raise AdminError(f"expected FIELD=VALUE, not {setting!r}")
            target.set_bucket(bucket, field, value)
        target.commit()
    doc = target.bucket(bucket)
    emit(doc, args.json, report_table([doc]))
    return 0


def cmd_account(args: argparse.Namespace) -> int:
    target = open_target(args)
    if args.action == "list":
        accounts = target.accounts()
        emit(accounts, args.json, account_table(accounts) if accounts else "no accounts")
        return 0
    if not args.name:
        raise AdminError(f"account {args.action} needs a NAME")
    if args.action == "delete":
        target.delete_account(args.name)
        target.commit()
        emit({"deleted": args.name}, args.json, f"account {args.name} deleted")
        return 0
    if args.action == "set":
        doc: dict[str, Any] = {}
        for setting in args.settings:
            field, sep, value = setting.partition("=")
            if not sep:
                raise AdminError(f"expected FIELD=VALUE, not {setting!r}")
            doc[field] = [b for b in value.split(",") if b] if field == "buckets" else value
        target.set_account(args.name, doc)
        target.commit()
    accounts = target.accounts()
    if args.name not in accounts:
        raise AdminError(f"no account {args.name!r}")
    emit(accounts[args.name], args.json, account_table({args.name: accounts[args.name]}))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    target = open_target(args)
    rows = target.buckets()
    accounts = target.accounts()
    if args.json:
        emit({"buckets": rows, "accounts": accounts}, True, "")
    else:
        text = report_table(rows)
        if accounts:
            text += "\n\n" + account_table(accounts)
        emit(None, False, text)
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    path = args.root
    online = not args.backing and _is_live(path)
    target = open_target(argparse.Namespace(backing=None if online else path, mount=path))
    report = target.reconcile(args.bucket, args.fix)
    if args.fix and not online:
        target.commit()
    emit(report, args.json, reconcile_table(report))
    return EXIT_DRIFT if report["drift"] else 0


def _is_live(path: str) -> bool:
    try:
        os.getxattr(path, PREFIX + b"accounts")
    except OSError:
        return False
    return True


def admin_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ironfs", description="ironfs administration")
    sub = p.add_subparsers(dest="command", required=True)

    def common(q: argparse.ArgumentParser, mount_option: bool = True) -> None:
        if mount_option:
            q.add_argument("--mount", help="the mount point (default: the only ironfs mount)")
        q.add_argument("--backing", metavar="DIR", help="edit an unmounted backing root instead")
        q.add_argument("--json", action="store_true", help="print JSON")

    q = sub.add_parser("quota", help="show or set a bucket's limits")
    q.add_argument("action", choices=["get", "set"])
    q.add_argument("target", metavar="PATH_OR_BUCKET",
                   help="the bucket's directory on the mount, or its name with --backing")
    q.add_argument("settings", nargs="*", metavar="FIELD=VALUE",
                   help="max_bytes, max_objects, grace_bytes, soft_bytes (sizes or none), account")
    common(q, mount_option=False)
    q.set_defaults(run=cmd_quota)

    a = sub.add_parser("account", help="list, show, set or delete accounts")
    a.add_argument("action", choices=["list", "get", "set", "delete"])
    a.add_argument("name", nargs="?")
    a.add_argument("settings", nargs="*", metavar="FIELD=VALUE",
                   help="max_bytes, max_objects, grace_bytes, soft_bytes, buckets=a,b")
    common(a)
    a.set_defaults(run=cmd_account)

    r = sub.add_parser("report", help="usage and limits of every bucket and account")
    r.add_argument("mount", nargs="?", help="the mount point (default: the only ironfs mount)")
    common(r, mount_option=False)
    r.set_defaults(run=cmd_report)

    c = sub.add_parser("reconcile", help="compare the ledger with a fresh scan")
    c.add_argument("root", metavar="MOUNT_OR_BACKING")
    c.add_argument("--bucket", help="only this bucket")
    c.add_argument("--fix", action="store_true", help="correct the ledger")
    c.add_argument("--backing", action="store_true", help="treat the path as a backing root")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(run=cmd_reconcile)
    return p


def admin_main(argv: Sequence[str]) -> int:
    args = admin_parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except AdminError as e:
        print(f"ironfs {args.command}: {e}", file=sys.stderr)
        return 1


__all__ = ["admin_main", "name_to_json"]
