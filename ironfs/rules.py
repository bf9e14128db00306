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
    #: The server reads an object twice per GET (a hash, then the data): a
    #: read-only open this many seconds after the last read handle closed is the
    #: same GET.  0: every read-only open is a GET.
    reread_window: float = 0.0
    #: The server replaces an object by unlinking it just before it renames the
    #: new upload onto its name: an unlink followed, within this many seconds,
    #: by a publication onto the same name is an overwrite, not a DELETE.
    #: 0: every unlink of an object is a DELETE.
    overwrite_window: float = 0.0

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
    "rclone": Profile("rclone", multipart_prefixes=(b".rclone_temp_multipart_",),
                      reread_window=1.0, overwrite_window=0.25),
    # IronBucket keeps <key>.metadata sidecars; .multipart/ and .versions/ are
    # dot directories, hidden by the generic rule.
    "ironbucket": Profile("ironbucket", sidecar_suffixes=(b".metadata",),
                          multipart_dirs=(b".multipart",)),
}
