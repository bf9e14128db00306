"""The ``ironfs`` command: ``ironfs [mount] BACKING MOUNTPOINT [-o opt[,opt…]]``,
``ironfs stats BUCKET_DIR`` (report.py), ``ironfs quota|account|report|reconcile``
(admin.py) and ``ironfs cluster init|release|grants`` (cluster_command.py).

Exit status: 0 clean stop, 1 could not start (bad option, unsuitable
directories, backing root already served), 2 bad command line, 3 crashed
while serving (the mount is left dead; clear it with ``fusermount3 -uz``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .config import ConfigError, build_config, check_paths
from .logs import setup_logging
from .state import AlreadyMounted

log = logging.getLogger("ironfs")

EXIT_OK, EXIT_START, EXIT_USAGE, EXIT_CRASH = 0, 1, 2, 3
ADMIN_COMMANDS = ("quota", "account", "report", "reconcile")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ironfs",
        description="Mount BACKING at MOUNTPOINT with per-bucket quotas (runs in the foreground).")
    p.add_argument("backing", metavar="BACKING", help="the real directory holding the buckets")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="where to show it")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT…]",
                   help="mount options (see README); may be repeated")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="default: info")
    p.add_argument("--version", action="version", version=f"ironfs {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cluster"] or (argv[:1] in (["report"], ["stats"]) and "--cluster" in argv):
        from .cluster_command import cluster_main

        if argv[0] != "cluster":  # ironfs report|stats --cluster DSN …: the cluster's figures
            argv = ["cluster", argv[0], *["--dsn" if a == "--cluster" else a for a in argv[1:]]]
        return cluster_main(argv[1:])
    if argv[:1] == ["stats"]:
        from .stats_command import stats_main

        return stats_main(argv[1:])
    if argv[:1] == ["bench"]:
        from .bench import bench_main

        return bench_main(argv[1:])
    if argv[:1] and argv[0] in ADMIN_COMMANDS:
        from .admin import admin_main

        return admin_main(argv)
    if argv[:1] == ["mount"]:  # explicit form, for a backing directory named "stats"
        argv = argv[1:]
    args = _parser().parse_args(argv)
    try:
        cfg = build_config(args.backing, args.mountpoint, args.options)
        check_paths(cfg)
        setup_logging(args.log_level, cfg.log_file)
    except ConfigError as e:
        print(f"ironfs: {e}", file=sys.stderr)
        return EXIT_START
    except OSError as e:
        print(f"ironfs: log_file {cfg.log_file}: {e.strerror}", file=sys.stderr)
        return EXIT_START
    from .mount import run  # pyfuse3 is imported only when mounting

    try:
        run(cfg)
    except (AlreadyMounted, ConfigError) as e:
        print(f"ironfs: {e}", file=sys.stderr)
        return EXIT_START
    except KeyboardInterrupt:
        log.info("interrupted before serving")
        return EXIT_START
    except Exception:
        log.critical("ironfs crashed; the mount is left dead on purpose "
                     "(clear it with fusermount3 -uz)", exc_info=True)
        return EXIT_CRASH
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
