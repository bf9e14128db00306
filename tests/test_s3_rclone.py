"""End to end: boto3 → rclone serve s3 (unmodified) → ironfs → backing directory."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import orjson
import pytest
from botocore.exceptions import ClientError

from tests.mounting import Mount, ledger, scan, start_mount
from tests.s3mixed import run_mixed
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


def pause() -> None:
    time.sleep(0.1)


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
    for i in range(2):  # (two HEADs of sibling objects within 2 ms read as a LIST: README)
        assert s3.head_object(Bucket="counted", Key=f"k{i}")["ContentLength"] == 1000
        pause()
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


def refused_multipart(s3, bucket: str) -> tuple[str, ClientError]:
    """Send a multipart upload of two 5 MiB parts into a 6 MiB bucket; returns
    which request was refused ("UploadPart" or "CompleteMultipartUpload") and
    its error.  rclone streams the parts into its temp file from a background
    writer, so the refusal of part 2's bytes reaches whichever request is
    running when the writer fails: usually the completion, UploadPart 2 on a
    busy machine (both seen)."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
    parts = []
    try:
        for n in (1, 2):
            r = s3.upload_part(Bucket=bucket, Key="big", UploadId=upload, PartNumber=n,
                               Body=bytes([n]) * 5 * MiB)
            parts.append({"ETag": r["ETag"], "PartNumber": n})
    except ClientError as error:
        assert n == 2, "part 1 fits"
        s3.abort_multipart_upload(Bucket=bucket, Key="big", UploadId=upload)  # it still exists
        return "UploadPart", error
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(Bucket=bucket, Key="big", UploadId=upload,
                                     MultipartUpload={"Parts": parts})
    with pytest.raises(ClientError, match="NoSuchUpload"):  # dropped with the refusal
        s3.abort_multipart_upload(Bucket=bucket, Key="big", UploadId=upload)
    return "CompleteMultipartUpload", info.value


def test_multipart_upload_that_does_not_fit_leaves_nothing(stack: tuple[Mount, RcloneS3]) -> None:
    m, server = stack
    s3 = server.client()
    s3.create_bucket(Bucket="small-mpu")
    os.setxattr(m.mnt / "small-mpu", "user.ironfs.max_bytes", b"6MiB")
    refused, error = refused_multipart(s3, "small-mpu")
    status = error.response["ResponseMetadata"]["HTTPStatusCode"]
    code = error.response["Error"]["Code"]
    print("refused multipart upload:", refused, "answered", status, code)
    assert status == 500 and code == "InternalError"
    time.sleep(0.3)
    assert not (m.backing / "small-mpu" / "big").exists() and leftovers(m, "small-mpu") == []
    assert ledger(m.mnt, "small-mpu") == scan(m.backing, "small-mpu") == (0, 0)
    settle()
    got = stats(m, "small-mpu")
    assert (got["quota_rejections"], got["multipart_count"], got["bytes_written"]) == (1, 0, 0)


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


def test_a_retried_refused_put_is_refused_and_counted_again(stack: tuple[Mount, RcloneS3]) -> None:
    """boto3 sends a PUT refused with a 500 again: each attempt is a refused
    request, counted in quota_rejections."""
    m, server = stack
    s3 = server.client(retries=2)
    s3.create_bucket(Bucket="retried-put")
    os.setxattr(m.mnt / "retried-put", "user.ironfs.max_bytes", b"4KiB")
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket="retried-put", Key="k", Body=b"x" * 8192)
    meta = info.value.response["ResponseMetadata"]
    assert (meta["HTTPStatusCode"], meta["RetryAttempts"]) == (500, 2)
    settle()
    assert stats(m, "retried-put")["quota_rejections"] == 3
    assert stats(m, "retried-put")["put_count"] == 0
    assert leftovers(m, "retried-put") == [] and ledger(m.mnt, "retried-put") == (0, 0)


def test_a_retried_refused_multipart_upload_is_refused_once(
        stack: tuple[Mount, RcloneS3]) -> None:
    """boto3 sends a request refused with a 500 again.  A refused
    CompleteMultipartUpload: rclone dropped the upload with the refusal, so the
    retry gets 404 NoSuchUpload.  A refused UploadPart: rclone answers the retry
    with a 500 from its failed writer, without writing.  Either way one refusal
    reached ironfs and is counted; nothing is left behind."""
    m, server = stack
    s3 = server.client(retries=1)
    s3.create_bucket(Bucket="retried-mpu")
    os.setxattr(m.mnt / "retried-mpu", "user.ironfs.max_bytes", b"6MiB")
    refused, error = refused_multipart(s3, "retried-mpu")
    response = error.response
    print("retried refused", refused, "answered:", response["ResponseMetadata"]["HTTPStatusCode"],
          response["Error"]["Code"], "after", response["ResponseMetadata"]["RetryAttempts"], "retry")
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    answer = (response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"])
    if refused == "CompleteMultipartUpload":
        assert answer == (404, "NoSuchUpload")
    else:
        assert answer == (500, "InternalError")
    settle()
    assert stats(m, "retried-mpu")["quota_rejections"] == 1
    assert not (m.backing / "retried-mpu" / "big").exists() and leftovers(m, "retried-mpu") == []
    assert ledger(m.mnt, "retried-mpu") == scan(m.backing, "retried-mpu") == (0, 0)


@pytest.mark.parametrize("seed", [1, 2])
def test_counters_match_a_mixed_workload(stack: tuple[Mount, RcloneS3], seed: int) -> None:
    """Eight clients, 150 requests each, near a full 64 MiB bucket."""
    m, server = stack
    bucket = f"mixed{seed}"
    server.client().create_bucket(Bucket=bucket)
    os.setxattr(m.mnt / bucket, "user.ironfs.max_bytes", b"64MiB")
    tally = run_mixed([server.client() for _ in range(8)], bucket, seed, 150)
    time.sleep(1.0)  # past HEAD_WAIT and a flush
    got = stats(m, bucket)
    made = tally.counters
    print("counter: clients made / ironfs counted;", made["list_of_one"], "LISTs of one object")
    for name in ("put_count", "multipart_count", "delete_count", "get_count", "head_count",
                 "list_count"):
        print(f"  {name}: {made[name]} / {got[name]}")
    print(f"  quota_rejections: {tally.refused} / {got['quota_rejections']}")
    print(f"  bytes_written: {tally.bytes_written} / {got['bytes_written']}")
    print(f"  bytes_read: {tally.bytes_read} whole + {tally.range_bytes} in {tally.ranges} ranges"
          f" / {got['bytes_read']}")
    for name in ("put_count", "multipart_count", "delete_count", "get_count"):
        assert got[name] == made[name], name
    assert got["quota_rejections"] == tally.refused > 0
    assert got["bytes_written"] == tally.bytes_written
    # A range GET reads from where it starts, rclone's reads overshoot its end:
    extra = got["bytes_read"] - tally.bytes_read - tally.range_bytes
    assert 0 <= extra <= tally.ranges * MiB, extra
    # A LIST of a prefix holding one object is the same single stat as a HEAD of
    # it (README): counted as a HEAD.  HEAD and LIST are told apart by the order
    # and timing of stats: within 2 %, but for a client's HEADs, one after the
    # other, of every key of their common prefix in name order: the very stats
    # of a LIST of it (README), counted as one when they come close enough.
    heads = made["head_count"] + made["list_of_one"]
    lists = made["list_count"]
    print(f"  HEADs like a LIST: {tally.heads_like_lists} in {tally.like_lists} runs")
    assert -0.02 * heads - tally.heads_like_lists <= got["head_count"] - heads <= 0.02 * heads, \
        (got["head_count"], heads)
    assert -0.02 * lists <= got["list_count"] - lists <= 0.02 * lists + tally.like_lists, \
        (got["list_count"], lists)
    assert ledger(m.mnt, bucket) == scan(m.backing, bucket, "rclone")


def test_counters_are_exact_on_a_sequence_of_every_kind(stack: tuple[Mount, RcloneS3]) -> None:
    """One client, each request 0.1 s after the previous answer (the mixed
    workload below has no pauses, and a tolerance on HEAD and LIST)."""
    m, server = stack
    s3 = server.client()
    b = "sequence"
    s3.create_bucket(Bucket=b)
    os.setxattr(m.mnt / b, "user.ironfs.max_bytes", b"8MiB")
    sizes = {"a": 1000, "b": 2000, "dir/c": 10, "dir/d": 20}
    for key, size in sizes.items():
        s3.put_object(Bucket=b, Key=key, Body=b"s" * size)
        pause()
    listed = s3.list_objects_v2(Bucket=b)  # right after the PUTs: rclone hashes every object
    assert [c["Key"] for c in listed["Contents"]] == ["a", "b", "dir/c", "dir/d"]
    pause()
    assert s3.head_object(Bucket=b, Key="a")["ContentLength"] == 1000  # hashed by the LIST
    pause()
    s3.put_object(Bucket=b, Key="e", Body=b"e" * 30)
    pause()
    assert s3.head_object(Bucket=b, Key="e")["ContentLength"] == 30  # never read: hashed now
    pause()
    assert s3.get_object(Bucket=b, Key="b")["Body"].read() == b"s" * 2000
    pause()
    s3.put_object(Bucket=b, Key="f", Body=b"f" * 40)
    pause()
    assert s3.get_object(Bucket=b, Key="f")["Body"].read() == b"f" * 40  # just written
    pause()
    s3.put_object(Bucket=b, Key="a", Body=b"o" * 1500)  # an overwrite: no DELETE
    pause()
    assert s3.get_object(Bucket=b, Key="a")["Body"].read() == b"o" * 1500  # right after it
    pause()
    assert s3.get_object(Bucket=b, Key="b", Range="bytes=100-199")["Body"].read() == b"s" * 100
    pause()
    upload = s3.create_multipart_upload(Bucket=b, Key="mp")["UploadId"]
    parts = []
    for n, body in enumerate((b"m" * 5 * MiB, b"n" * 1024), start=1):
        etag = s3.upload_part(Bucket=b, Key="mp", UploadId=upload, PartNumber=n, Body=body)["ETag"]
        parts.append({"ETag": etag, "PartNumber": n})
    s3.complete_multipart_upload(Bucket=b, Key="mp", UploadId=upload,
                                 MultipartUpload={"Parts": parts})
    pause()
    with pytest.raises(ClientError):  # 5 MiB + 4 MiB > 8 MiB: refused
        s3.put_object(Bucket=b, Key="g", Body=b"g" * 4 * MiB)
    pause()
    upload = s3.create_multipart_upload(Bucket=b, Key="mp2")["UploadId"]
    with pytest.raises(ClientError) as refused:  # at UploadPart or at completion
        etag = s3.upload_part(Bucket=b, Key="mp2", UploadId=upload, PartNumber=1,
                              Body=b"x" * 5 * MiB)["ETag"]
        print("part accepted; completing")
        s3.complete_multipart_upload(Bucket=b, Key="mp2", UploadId=upload,
                                     MultipartUpload={"Parts": [{"ETag": etag, "PartNumber": 1}]})
    print("refused multipart:", refused.value.operation_name)
    try:
        s3.abort_multipart_upload(Bucket=b, Key="mp2", UploadId=upload)
    except ClientError:
        pass  # rclone forgot it when the completion failed
    pause()
    s3.delete_object(Bucket=b, Key="b")
    pause()
    settle()
    got = stats(m, b)
    print("observed counters:", got)
    assert {k: got[k] for k in ("put_count", "multipart_count", "delete_count", "get_count",
                                "head_count", "list_count", "quota_rejections")} == {
        "put_count": 7, "multipart_count": 1, "delete_count": 1, "get_count": 4,
        "head_count": 2, "list_count": 1, "quota_rejections": 2}
    assert got["bytes_written"] == 1000 + 2000 + 10 + 20 + 30 + 40 + 1500 + 5 * MiB + 1024
    whole = 2000 + 40 + 1500
    # The range GET counts what rclone read for it: the 100 bytes asked, at most
    # the whole object (it reads from offset 0 in 4 KiB).
    assert whole + 100 <= got["bytes_read"] <= whole + 2000
    assert ledger(m.mnt, b) == scan(m.backing, b, "rclone")
