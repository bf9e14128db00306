"""What counts: the one definition shared by the live ledger and the scanner.

DESIGN.md: a bucket's ``used_bytes`` is the sum of ``st_size`` over every regular
file below it (hidden ones included, ironfs's own state excluded, each inode
once); ``objects`` is the number of names that an S3 server would list as keys.
Which names those are depends on the server's on-disk habits, hence profiles.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Entries directly inside a bucket directory that belong to ironfs.
QUOTA_FILE = b".quota"
STATS_DIR = b".stats"
#: Prefix of ironfs's temporary and set-aside files inside a bucket directory.
STATE_PREFIX = b".ironfs"
#: The bucket's limits alone, rewritten only when they change: an
#: administrator's limit survives the loss of ``.quota`` (which a crash rebuilds).
LIMITS_FILE = STATE_PREFIX + b"-limits"
#: Mount-wide state directory at the backing root.
ROOT_STATE_DIR = b".ironfs"


def is_bucket_state(name: bytes) -> bool:
    """True for an entry directly inside a bucket that is ironfs's own state."""
    return name == QUOTA_FILE or name == STATS_DIR or name.startswith(STATE_PREFIX)


def is_root_state(name: bytes) -> bool:
    """True for an entry directly inside the backing root that is ironfs's state."""
    return name == ROOT_STATE_DIR


def is_bucket_name(name: bytes) -> bool:
    """A top-level directory is a bucket unless its name starts with a dot."""
    return not name.startswith(b".")


def hides(name: bytes) -> bool:
    """A directory component that hides everything below it from the object count."""
    return name.startswith(b".")


@dataclass(frozen=True, slots=True)
class Profile:
    """A server's on-disk habits: which file names are not objects.

    ``sidecar_suffixes``: files next to objects that hold metadata (never objects,
    though their bytes are charged like every other file).
    """

    name: str
    sidecar_suffixes: tuple[bytes, ...] = ()
    #: A staging file with one of these name prefixes, renamed onto a visible
    #: name, completes a multipart upload.
    multipart_prefixes: tuple[bytes, ...] = ()
    #: Or one staged below a directory of this name at the top of the bucket.
    multipart_dirs: tuple[bytes, ...] = ()
    #: The server reads whole objects to hash them (for ETags) with read(2)s of
    #: this size, and serves GETs with reads that start smaller: a read-only
    #: handle whose first read is (offset 0, this size) is a hash read, neither
    #: a GET nor bytes read.  0: every read-only open of an object is a GET.
    hash_read_size: int = 0
    #: The server replaces an object by unlinking it just before it renames the
    #: new upload onto its name: an unlink followed, within this many seconds,
    #: by a publication onto the same name is an overwrite, not a DELETE.
    #: 0: every unlink of an object is a DELETE.
    overwrite_window: float = 0.0
    #: How long the kernel may cache an object's entry and attributes (None:
    #: the mount's entry_timeout/attr_timeout).  0 lets every stat(2) of an
    #: object reach ironfs, which HEAD and LIST counting need when the server
    #: answers them from a stat alone.
    object_timeout: float | None = None
    #: Read-only handles of objects take the kernel's direct-I/O path: every
    #: read(2) reaches ironfs with its own offset and size (bytes_read exact,
    #: hash reads recognisable).  Shared mmap of such a handle fails (ENODEV),
    #: so only for servers that do not mmap objects.  Otherwise read-only opens
    #: drop the kernel's cached pages, so each open's reads reach ironfs.
    direct_reads: bool = False
    #: A lookup of an object this soon after it was opened, closed or published
    #: is the server's own check around that request, not a HEAD.
    quiet_after_use: float = 1.0
    #: 0: every lookup within quiet_after_use is the server's own.  n: only the
    #: first n after a publication or a GET read to the end (later ones are
    #: clients' HEADs).
    checks_after_use: int = 0
    #: The server answers a LIST with a stat of each listed object and nothing
    #: else: lookups of objects of one bucket in ascending path order, each
    #: within this many seconds of the previous one's last request, are one
    #: LIST (two or more of them) and not HEADs.  0: lookups are HEADs only,
    #: and a LIST is a directory opened for reading.
    list_gap: float = 0.0
    #: Sweeps of one directory's distinct objects less than this apart are
    #: parts of one LIST, when one of them holds two objects or more.
    list_merge_gap: float = 0.0
    #: How many times the server stats an object in one request, when every
    #: stat reaches ironfs (object_timeout 0): before it serves a GET, before it
    #: serves one right after hashing the object, more when a range GET starts
    #: past offset 0, before it unlinks it for a DELETE and for an overwrite.
    #: Lookups are matched to requests by these counts.  0: all lookups of an
    #: object until HEAD_WAIT passes are one request.
    stats_before_get: int = 0
    stats_after_hash: int = 0
    stats_before_seek: int = 0
    stats_before_delete: int = 0
    stats_before_overwrite: int = 0

    def is_object_name(self, name: bytes) -> bool:
        """Whether a regular file called *name*, in a visible directory, is an object."""
        if name.startswith(b"."):
            return False
        for suffix in self.sidecar_suffixes:
            if name.endswith(suffix):
                return False
        return True

    def is_multipart(self, components: list[bytes]) -> bool:
        """Whether a staging file at *components* (inside its bucket) is a
        completed multipart upload when it is published."""
        if not components:
            return False
        if self.multipart_prefixes and components[-1].startswith(self.multipart_prefixes):
            return True
        return components[0] in self.multipart_dirs


PROFILES: dict[str, Profile] = {
    "generic": Profile("generic"),
    # rclone's temp files (.rclone_temp_put_*, .rclone_temp_multipart_*) are dot
    # files already, so the generic rule covers them.
    # rclone serve s3 (checked: 1.75.2, local backend, default VFS options):
    # README, "Operation statistics", has its syscalls per request.
    "rclone": Profile("rclone", multipart_prefixes=(b".rclone_temp_multipart_",),
                      hash_read_size=32768, overwrite_window=0.25, object_timeout=0.0,
                      direct_reads=True, quiet_after_use=1.0, checks_after_use=1,
                      list_gap=0.002, list_merge_gap=0.015, stats_before_get=3,
                      stats_after_hash=2, stats_before_seek=2, stats_before_delete=1,
                      stats_before_overwrite=2),
    # IronBucket keeps <key>.metadata sidecars; .multipart/ and .versions/ are
    # dot directories, hidden by the generic rule.
    "ironbucket": Profile("ironbucket", sidecar_suffixes=(b".metadata",),
                          multipart_dirs=(b".multipart",)),
}
