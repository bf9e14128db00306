"""End to end: boto3 → rclone serve s3 (unmodified) → ironfs → backing directory."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import orjson
import pytest
from botocore.exceptions import ClientError

from tests.mounting import Mount, ledger, scan, start_mount
from tests.s3server import RcloneS3

MiB = 1 << 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mount, RcloneS3]]:
    base = tmp_path_factory.mktemp("s3")
    m = start_mount(base / "backing", base / "s3", options=["profile=rclone", "flush_interval_ms=200"])
    try:
        server = RcloneS3(m.mnt, base)
        try:
            yield m, server
        finally:
            server.stop()
    finally:
        m.stop()


def stats(m: Mount, bucket: str) -> dict:
    return orjson.loads(os.getxattr(m.mnt / bucket, "user.ironfs.stats"))


def settle() -> None:
    time.sleep(0.8)  # lookups left without an open become HEADs after 0.5 s


def test_counters_match_a_fixed_workload(stack: tuple[Mount, RcloneS3]) -> None:
    m, server = stack
    s3 = server.client()
    s3.create_bucket(Bucket="counted")
    for i in range(5):
        s3.put_object(Bucket="counted", Key=f"k{i}", Body=b"x" * 1000)
    s3.put_object(Bucket="counted", Key="dir/k5", Body=b"y" * 10)
    for i in range(3):
        assert s3.get_object(Bucket="counted", Key=f"k{i}")["Body"].read() == b"x" * 1000
    time.sleep(1.3)  # past the kernel's attribute cache and the quiet time after a GET
    for i in range(2):
        assert s3.head_object(Bucket="counted", Key=f"k{i}")["ContentLength"] == 1000
    settle()
    for i in (3, 4):
        s3.delete_object(Bucket="counted", Key=f"k{i}")
    upload = s3.create_multipart_upload(Bucket="counted", Key="big")
    parts = []
    for n, body in enumerate((b"a" * 5 * MiB, b"b" * 1024), start=1):
        r = s3.upload_part(Bucket="counted", Key="big", UploadId=upload["UploadId"],
                           PartNumber=n, Body=body)
        parts.append({"ETag": r["ETag"], "PartNumber": n})
    s3.complete_multipart_upload(Bucket="counted", Key="big", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": parts})
    settle()
    got = stats(m, "counted")
    print("observed counters:", got)
    assert (got["put_count"], got["get_count"], got["delete_count"], got["multipart_count"]) \
        == (6, 3, 2, 1)
    assert got["head_count"] == 2
    assert got["bytes_written"] == 5 * 1000 + 10 + 5 * MiB + 1024
    assert ledger(m.mnt, "counted") == scan(m.backing, "counted") == (3010 + 5 * MiB + 1024, 5)
    time.sleep(0.5)
    month = got["month"]
    on_disk = orjson.loads((m.backing / "counted" / ".stats" / f"{month}.json").read_bytes())
    assert {k: on_disk[k] for k in got if k != "month"} == {k: v for k, v in got.items() if k != "month"}


def leftovers(m: Mount, bucket: str) -> list[str]:
    return [p.name for p in (m.backing / bucket).rglob(".rclone_temp_*")]


def test_put_that_does_not_fit_fails_and_leaves_nothing(stack: tuple[Mount, RcloneS3]) -> None:
    m, server = stack
    s3 = server.client()
    s3.create_bucket(Bucket="small")
    os.setxattr(m.mnt / "small", "user.ironfs.max_bytes", b"10KiB")
    s3.put_object(Bucket="small", Key="a", Body=b"1" * 4096)
    s3.put_object(Bucket="small", Key="b", Body=b"2" * 4096)
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket="small", Key="c", Body=b"3" * 4096)
    status = info.value.response["ResponseMetadata"]["HTTPStatusCode"]
    code = info.value.response["Error"]["Code"]
    print("refused PUT answered:", status, code)
    assert status == 500 and code == "InternalError"
    assert not (m.backing / "small" / "c").exists() and leftovers(m, "small") == []
    assert ledger(m.mnt, "small") == scan(m.backing, "small") == (8192, 2)
    s3.delete_object(Bucket="small", Key="a")
    s3.put_object(Bucket="small", Key="c", Body=b"3" * 4096)  # fits again after a DELETE
    assert ledger(m.mnt, "small") == scan(m.backing, "small") == (8192, 2)
    settle()
    assert stats(m, "small")["quota_rejections"] >= 1


def test_multipart_upload_that_does_not_fit_leaves_nothing(stack: tuple[Mount, RcloneS3]) -> None:
    m, server = stack
    s3 = server.client()
    s3.create_bucket(Bucket="small-mpu")
    os.setxattr(m.mnt / "small-mpu", "user.ironfs.max_bytes", b"6MiB")
    upload = s3.create_multipart_upload(Bucket="small-mpu", Key="big")
    parts = []
    for n in (1, 2):  # rclone keeps parts outside the bucket until completion
        r = s3.upload_part(Bucket="small-mpu", Key="big", UploadId=upload["UploadId"],
                           PartNumber=n, Body=bytes([n]) * 5 * MiB)
        parts.append({"ETag": r["ETag"], "PartNumber": n})
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(Bucket="small-mpu", Key="big", UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": parts})
    status = info.value.response["ResponseMetadata"]["HTTPStatusCode"]
    code = info.value.response["Error"]["Code"]
    print("refused multipart completion answered:", status, code)
    assert status == 500 and code == "InternalError"
    try:
        s3.abort_multipart_upload(Bucket="small-mpu", Key="big", UploadId=upload["UploadId"])
    except ClientError:
        pass
    time.sleep(0.3)
    assert not (m.backing / "small-mpu" / "big").exists() and leftovers(m, "small-mpu") == []
    assert ledger(m.mnt, "small-mpu") == scan(m.backing, "small-mpu") == (0, 0)


def test_deleted_bucket_is_archived_and_stays_deleted(stack: tuple[Mount, RcloneS3]) -> None:
    m, server = stack
    s3 = server.client()
    s3.create_bucket(Bucket="doomed")
    for key in ("x", "d/y"):
        s3.put_object(Bucket="doomed", Key=key, Body=b"z" * 100)
        s3.delete_object(Bucket="doomed", Key=key)
    settle()
    s3.delete_bucket(Bucket="doomed")
    assert not (m.backing / "doomed").exists()
    archives = list((m.backing / ".ironfs" / "archive" / "doomed").iterdir())
    assert len(archives) == 1
    months = list((archives[0] / ".stats").glob("*.json"))
    assert len(months) == 1
    kept = orjson.loads(months[0].read_bytes())
    assert (kept["put_count"], kept["delete_count"]) == (2, 2)
    time.sleep(0.6)  # several flush ticks later: nothing brought it back
    assert not (m.backing / "doomed").exists()
    with pytest.raises(ClientError):
        s3.head_bucket(Bucket="doomed")


def test_an_overwrite_is_one_put_and_no_delete(stack: tuple[Mount, RcloneS3]) -> None:
    m, server = stack
    s3 = server.client()
    s3.create_bucket(Bucket="overwritten")
    s3.put_object(Bucket="overwritten", Key="k", Body=b"1" * 100)
    settle()
    before = stats(m, "overwritten")
    for body in (b"2" * 200, b"3" * 300):  # rclone unlinks the old object, then renames onto it
        s3.put_object(Bucket="overwritten", Key="k", Body=body)
    s3.delete_object(Bucket="overwritten", Key="k")
    settle()
    after = stats(m, "overwritten")
    assert after["put_count"] - before["put_count"] == 2
    assert after["delete_count"] - before["delete_count"] == 1  # the DeleteObject only
    assert ledger(m.mnt, "overwritten") == scan(m.backing, "overwritten", "rclone") == (0, 0)
