from __future__ import annotations

import errno

import pytest

from ironfs.config import ConfigError, build_config, split_options
from ironfs.units import format_size, parse_count, parse_limit, parse_size


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("1048576", 1 << 20), ("500M", 500 << 20), ("10GiB", 10 << 30),
    ("10gib", 10 << 30), ("1.5K", 1536), ("2 MB", 2_000_000), ("1TiB", 1 << 40), ("7b", 7),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "-1", "ten", "5 XB", "1e9", "0x10", "99999999999999P"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_limits_and_counts() -> None:
    assert parse_limit("none") is None and parse_limit("Unlimited") is None
    assert parse_limit("1G") == 1 << 30
    assert parse_count("12") == 12 and parse_count("none") is None
    with pytest.raises(ValueError):
        parse_count("1K")


def test_format_size() -> None:
    assert format_size(None) == "none"
    assert format_size(512) == "512 B"
    assert format_size(int(4.2 * (1 << 30))) == "4.2 GiB"


def test_split_options() -> None:
    assert split_options(["a,b=1", "c", ",,"]) == [("a", None), ("b", "1"), ("c", None)]


def test_environment_then_options_win() -> None:
    env = {"BUCKET_QUOTA_BYTES": "1M", "QUOTA_FLUSH_INTERVAL_MS": "250", "QUOTA_CACHE_MAX_SIZE": "9"}
    cfg = build_config("/b", "/m", [], env)
    assert (cfg.bucket_max_bytes, cfg.flush_interval, cfg.bucket_cache) == (1 << 20, 0.25, 9)
    cfg = build_config("/b", "/m", ["bucket_quota_bytes=2M,flush_interval_ms=5000"], env)
    assert (cfg.bucket_max_bytes, cfg.flush_interval) == (2 << 20, 5.0)


def test_the_seeds_account_default_is_the_account_default() -> None:
    assert build_config("/b", "/m", [], {"XPOD_DEFAULT_QUOTA": "20GiB"}).account_max_bytes == 20 << 30
    both = {"XPOD_DEFAULT_QUOTA": "20GiB", "IRONFS_DEFAULT_ACCOUNT_QUOTA": "30GiB"}
    assert build_config("/b", "/m", [], both).account_max_bytes == 30 << 30
    assert build_config("/b", "/m", ["account_quota_bytes=1G"], both).account_max_bytes == 1 << 30


def test_options() -> None:
    cfg = build_config("/b", "/m", ["noquota,expose_state,quota_errno=edquot,profile=rclone",
                                    "admin_uid=1000,nosuid,rw,x-systemd.automount,_netdev"], {})
    assert not cfg.enforce and cfg.expose_state and cfg.quota_errno == errno.EDQUOT
    assert cfg.profile.name == "rclone" and cfg.admin_uid == 1000
    assert cfg.kernel_options == {"nosuid"}
    assert build_config("/b", "/m", ["bucket_quota_bytes=none"], {}).bucket_max_bytes is None


@pytest.mark.parametrize("opts, env", [
    (["frobnicate"], {}), (["noquota=1"], {}), (["profile"], {}), (["admin_uid=root"], {}),
    (["flush_interval_ms=0"], {}), ([], {"BUCKET_QUOTA_BYTES": "huge"}),
    ([], {"QUOTA_CACHE_MAX_SIZE": "-3"}),
])
def test_bad_configuration(opts: list[str], env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        build_config("/b", "/m", opts, env)
