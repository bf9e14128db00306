"""A real, unmodified S3 server (rclone serve s3) on 127.0.0.1, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import boto3
from botocore.config import Config

from ironfs.bench_s3 import free_port, rclone_binary

KEY, SECRET = "ironfs-test-key", "ironfs-test-secret"


class RcloneS3:
    def __init__(self, root: Path, workdir: Path) -> None:
        self.port = free_port()
        config = workdir / "rclone.conf"
        config.write_text("")
        self.log = workdir / "rclone.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
                 "--auth-key", f"{KEY},{SECRET}", str(root)],
                stdout=out, stderr=out, env={**os.environ, "RCLONE_CONFIG": str(config)})
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"rclone did not start:\n{self.log.read_text()}") from None
                time.sleep(0.1)

    def client(self, retries: int = 0):
        """A boto3 client; *retries*: how many times it sends a request again
        after an error it deems retryable (boto3's default is 4)."""
        return boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{self.port}", region_name="us-east-1",
            aws_access_key_id=KEY, aws_secret_access_key=SECRET,
            config=Config(retries={"max_attempts": retries}, s3={"addressing_style": "path"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
