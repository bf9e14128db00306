"""Mount configuration: ``-o`` options, falling back to the seed's environment
variables.  Every problem is a ConfigError with one line fit for stderr."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .ledger import DEFAULT_ACCOUNT_MAX_BYTES, DEFAULT_BUCKET_MAX_BYTES
from .mountinfo import is_fuse_mount
from .rules import PROFILES, Profile
from .units import parse_limit

#: FUSE/mount(8) options passed on to the kernel unchanged.
KERNEL_OPTIONS = frozenset({"ro", "nosuid", "nodev", "noexec", "noatime", "sync", "dirsync"})
#: Options mount(8) and fstab hand to helpers that have no meaning here.
IGNORED_OPTIONS = frozenset({"rw", "auto", "noauto", "nofail", "_netdev", "user", "users",
                             "defaults", "allow_other", "default_permissions", "suid",
                             "dev", "exec", "atime", "relatime"})


class ConfigError(ValueError):
    pass


@dataclass(slots=True)
class Config:
    backing: bytes
    mountpoint: bytes
    bucket_max_bytes: int | None = DEFAULT_BUCKET_MAX_BYTES
    account_max_bytes: int | None = DEFAULT_ACCOUNT_MAX_BYTES
    flush_interval: float = 1.0
    bucket_cache: int | None = None
    quota_errno: int = errno.ENOSPC
    enforce: bool = True
    expose_state: bool = False
    profile: Profile = PROFILES["generic"]
    admin_uid: int | None = None
    force_rescan: bool = False
    scan_workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    kernel_options: set[str] = field(default_factory=set)
    metrics_address: str | None = None
    metrics_file: str | None = None
    log_file: str | None = None
    entry_timeout: float = 1.0
    attr_timeout: float = 1.0
    cluster: str | None = None  # PostgreSQL DSN: this mount is a node of a cluster
    node: str = field(default_factory=lambda: socket.gethostname())


def _int(name: str, text: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}: not an integer: {text!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, not {value}")
    return value


def _limit(name: str, text: str) -> int | None:
    try:
        return parse_limit(text)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None


def split_options(values: Sequence[str]) -> list[tuple[str, str | None]]:
    """``["a,b=1", "c"]`` → ``[("a", None), ("b", "1"), ("c", None)]``."""
    out: list[tuple[str, str | None]] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, val = item.partition("=")
            out.append((key, val if sep else None))
    return out


def _need(key: str, val: str | None) -> str:
    if val is None:
        raise ConfigError(f"option {key} needs a value ({key}=…)")
    return val


def _flag(key: str, val: str | None) -> bool:
    if val is not None:
        raise ConfigError(f"option {key} takes no value")
    return True


def build_config(backing: str, mountpoint: str, options: Sequence[str],
                 env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    cfg = Config(backing=os.fsencode(os.path.abspath(backing)),
                 mountpoint=os.fsencode(os.path.abspath(mountpoint)))
    if "BUCKET_QUOTA_BYTES" in env:
        cfg.bucket_max_bytes = _limit("BUCKET_QUOTA_BYTES", env["BUCKET_QUOTA_BYTES"])
    # The account/pod seed's XPOD_DEFAULT_QUOTA is the same setting.
    for name in ("XPOD_DEFAULT_QUOTA", "IRONFS_DEFAULT_ACCOUNT_QUOTA"):
        if name in env:
            cfg.account_max_bytes = _limit(name, env[name])
    if "QUOTA_FLUSH_INTERVAL_MS" in env:
        cfg.flush_interval = _int("QUOTA_FLUSH_INTERVAL_MS", env["QUOTA_FLUSH_INTERVAL_MS"], 1) / 1000
    if "QUOTA_CACHE_MAX_SIZE" in env:
        cfg.bucket_cache = _int("QUOTA_CACHE_MAX_SIZE", env["QUOTA_CACHE_MAX_SIZE"], 1)
    for key, val in split_options(options):
        _apply_option(cfg, key, val)
    return cfg


def _apply_option(cfg: Config, key: str, val: str | None) -> None:
    if key == "bucket_quota_bytes":
        cfg.bucket_max_bytes = _limit(key, _need(key, val))
    elif key == "account_quota_bytes":
        cfg.account_max_bytes = _limit(key, _need(key, val))
    elif key == "flush_interval_ms":
        cfg.flush_interval = _int(key, _need(key, val), 1) / 1000
    elif key == "bucket_cache":
        cfg.bucket_cache = _int(key, _need(key, val), 1)
    elif key == "quota_errno":
        name = _need(key, val).upper()
        if name not in ("ENOSPC", "EDQUOT"):
            raise ConfigError(f"quota_errno must be ENOSPC or EDQUOT, not {val!r}")
        cfg.quota_errno = getattr(errno, name)
    elif key == "noquota":
        cfg.enforce = not _flag(key, val)
    elif key == "expose_state":
        cfg.expose_state = _flag(key, val)
    elif key == "rescan":
        cfg.force_rescan = _flag(key, val)
    elif key == "profile":
        name = _need(key, val)
        if name not in PROFILES:
            raise ConfigError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})")
        cfg.profile = PROFILES[name]
    elif key == "admin_uid":
        cfg.admin_uid = _int(key, _need(key, val))
    elif key == "metrics":
        address = _need(key, val)
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"metrics: expected HOST:PORT, e.g. 127.0.0.1:9410, not {address!r}")
        cfg.metrics_address = address
    elif key in ("entry_timeout", "attr_timeout"):
        text = _need(key, val)
        try:
            seconds = float(text)
        except ValueError:
            raise ConfigError(f"{key}: not a number of seconds: {text!r}") from None
        if not 0 <= seconds <= 3600:
            raise ConfigError(f"{key}: must be between 0 and 3600 seconds")
        setattr(cfg, key, seconds)
    elif key == "cluster":
        dsn = _need(key, val)
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"cluster: expected postgresql://USER@HOST:PORT/DATABASE, not {dsn!r}")
        cfg.cluster = dsn
    elif key == "node":
        name = _need(key, val)
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ConfigError(f"node: letters, digits, '-', '_' and '.' only, not {name!r}")
        cfg.node = name
    elif key == "log_file":
        cfg.log_file = _need(key, val)
    elif key == "metrics_file":
        cfg.metrics_file = _need(key, val)
    elif key == "scan_workers":
        cfg.scan_workers = _int(key, _need(key, val), 1)
    elif key in KERNEL_OPTIONS:
        _flag(key, val)
        cfg.kernel_options.add(key)
    elif key in IGNORED_OPTIONS or key.startswith("x-"):
        pass
    else:
        raise ConfigError(f"unknown mount option {key!r}")


def check_paths(cfg: Config) -> None:
    """The backing root must be a writable directory; the mountpoint a directory
    that is not the backing root nor inside it."""
    backing, mnt = cfg.backing, cfg.mountpoint
    if not os.path.isdir(backing):
        raise ConfigError(f"backing directory {os.fsdecode(backing)} does not exist "
                          "or is not a directory")
    if not os.access(backing, os.W_OK | os.X_OK):
        raise ConfigError(f"backing directory {os.fsdecode(backing)} is not writable")
    if is_fuse_mount(mnt):
        raise ConfigError(f"{os.fsdecode(mnt)} is already a FUSE mount "
                          f"(clear a dead one with: fusermount3 -uz {os.fsdecode(mnt)})")
    if not os.path.isdir(mnt):
        raise ConfigError(f"mountpoint {os.fsdecode(mnt)} does not exist or is not a directory")
    real_b, real_m = os.path.realpath(backing), os.path.realpath(mnt)
    if real_m == real_b or real_m.startswith(real_b.rstrip(b"/") + b"/"):
        raise ConfigError("the mountpoint must not be the backing directory or inside it")
