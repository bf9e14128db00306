"""A real PostgreSQL of the tests' own: initdb into a temporary directory as an
unprivileged user (PostgreSQL refuses root), listening on 127.0.0.1 on a free
port, stopped in teardown."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ironfs import clusterdb
from ironfs.bench_s3 import free_port
from tests.mounting import unavailable

USER = "nobody"


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgreSQL:
    """Its files live in a directory of its own under /tmp (pytest's temporary
    directories are closed to other users)."""

    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            unavailable("PostgreSQL server binaries not installed (Debian: postgresql)")
        assert bindir is not None
        self.bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="ironfs-pg-"))
        user = pwd.getpwnam(USER)
        os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)
        self.dir = self.root / "data"
        self.log = self.root / "postgresql.log"
        self.port = free_port()
        self._as_user("mkdir", str(self.dir))
        self._as_user("initdb", "-D", str(self.dir), "-A", "trust", "-U", "ironfs", "--no-sync")
        self.start()
        self.dsn = f"postgresql://ironfs@127.0.0.1:{self.port}/postgres"

    def _as_user(self, tool: str, *args: str) -> None:
        program = str(self.bin / tool) if (self.bin / tool).exists() else tool
        subprocess.run(["runuser", "-u", USER, "--", program, *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd="/")

    def start(self) -> None:
        self._as_user("pg_ctl", "-D", str(self.dir), "-l", str(self.log), "-w", "-t", "60", "-o",
                      f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off",
                      "start")

    def stop(self, mode: str = "fast") -> None:
        try:
            self._as_user("pg_ctl", "-D", str(self.dir), "-m", mode, "-w", "stop")
        except subprocess.CalledProcessError:
            pass  # already stopped

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def cluster_database() -> Iterator[PostgreSQL]:
    """A PostgreSQL with the cluster's schema, destroyed afterwards (psycopg
    missing: skipped, or failed in CI)."""
    try:
        import psycopg  # noqa: F401 (the "cluster" extra)
    except ImportError:
        unavailable("psycopg is not installed (pip install -e '.[cluster]')")
    server = PostgreSQL()
    try:
        conn = clusterdb.connect(server.dsn)
        try:
            clusterdb.init_schema(conn)
        finally:
            conn.close()
        yield server
    finally:
        server.destroy()
