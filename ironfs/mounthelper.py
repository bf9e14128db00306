"""``mount.fuse.ironfs``: lets ``mount -t fuse.ironfs BACKING MOUNTPOINT -o …`` and
``/etc/fstab`` start ironfs.

mount(8) waits for its helper to return, but ironfs runs in the foreground, so
the helper starts the daemon in a session of its own, waits for its readiness
message (the same notification systemd gets) and returns 0, or returns 32 with
the daemon's reason if it could not mount.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

MOUNT_FAILURE = 32  # mount(8)'s exit status for "mount failure"
DEFAULT_LOG = "/var/log/ironfs.log"


def parse(argv: list[str]) -> tuple[str, str, list[str], bool]:
    """mount(8) calls ``helper SOURCE TARGET [-sfnv] [-o OPTIONS]``."""
    positional, options, fake = [], [], False
    it = iter(argv)
    for arg in it:
        if arg == "-o":
            options.append(next(it, ""))
        elif arg.startswith("-o"):
            options.append(arg[2:])
        elif arg.startswith("-") and len(arg) > 1:
            fake = fake or "f" in arg[1:]
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise SystemExit("usage: mount.fuse.ironfs BACKING MOUNTPOINT [-o options]")
    return positional[0], positional[1], options, fake


def main(argv: list[str] | None = None) -> int:
    source, target, options, fake = parse(sys.argv[1:] if argv is None else argv)
    if fake:
        return 0
    opts = ",".join(o for o in options if o)
    if "log_file=" not in opts:
        opts = ",".join(filter(None, [opts, f"log_file={DEFAULT_LOG}"]))
    with tempfile.TemporaryDirectory(prefix="ironfs-mount-") as tmp:
        address = os.path.join(tmp, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, \
                tempfile.TemporaryFile() as errors:
            sock.bind(address)
            sock.settimeout(0.2)
            proc = subprocess.Popen(
                # -P: never import an "ironfs" directory from the caller's cwd.
                [sys.executable, "-P", "-m", "ironfs", source, target, "-o", opts],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                start_new_session=True, env={**os.environ, "NOTIFY_SOCKET": address})
            if wait_ready(sock, proc):
                return 0
            errors.seek(0)
            reason = errors.read().decode(errors="replace").strip()
            print(reason or f"ironfs exited with status {proc.returncode}", file=sys.stderr)
            return MOUNT_FAILURE


def wait_ready(sock: socket.socket, proc: subprocess.Popen[bytes]) -> bool:
    """True once the daemon says READY=1; False if it exits first."""
    while True:
        try:
            if b"READY=1" in sock.recv(4096).split(b"\n"):
                return True
        except TimeoutError:
            pass
        if proc.poll() is not None:
            return False


if __name__ == "__main__":
    sys.exit(main())
