"""systemd's readiness protocol (sd_notify), spoken directly: one datagram to
``$NOTIFY_SOCKET``.  A no-op when not started by systemd with Type=notify."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send ``READY=1``, ``STOPPING=1``, ``STATUS=…``; True if it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode())
    except (FileNotFoundError, ConnectionRefusedError):
        # The listener is gone: mount.fuse.ironfs waits for READY only.
        log.debug("no listener on NOTIFY_SOCKET for %s", message.split("=")[0])
        return False
    except OSError as e:
        log.warning("could not notify systemd (%s): %s", message.split("=")[0], e.strerror)
        return False
    return True
