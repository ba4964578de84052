"""Unix socket files: remove only the one this process created.

A service unlinks a stale socket before it binds (the previous owner is
gone, or about to be), and unlinks its socket when it stops. Between the
two, another instance may have taken the path over: an orphan of a killed
supervisor that stops late must not delete the socket a newer instance just
bound, or Postfix loses the service with nobody noticing. So each service
remembers the inode it bound and, on shutdown, unlinks the path only if it
still names that inode (libmilter does the same for its listener).
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger("postwarden.socket")

Identity = tuple[int, int]


def identity(path: str) -> Identity:
    """(device, inode) of the socket file at `path`."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def remove_own(path: str, own: Identity | None) -> bool:
    """Unlink `path` if it is still the socket we bound; True if removed."""
    if own is None:
        return False
    try:
        current = identity(path)
    except OSError:  # gone, or a directory the dropped user cannot search
        return False
    if current != own:
        log.info("%s now belongs to another process; leaving it in place", path)
        return False
    # After dropping root the directory may not be ours (Postfix's private/):
    # the socket stays, and the next start as root replaces it.
    with contextlib.suppress(OSError):
        os.unlink(path)
    return True
