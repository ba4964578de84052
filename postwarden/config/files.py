"""Reading the config file and the files it names, within limits.

Every file postwarden reads because the config says so (the config itself,
rule tables, whitelists, maps) must be a regular file of bounded size: a FIFO
would block the reader forever, `/dev/zero` would grow memory until a
MemoryError, and a 50 MB YAML file takes minutes to parse in every process.
Each refusal is an `OSError` naming the file and the reason, so callers that
already report unreadable files report these too.

Limits (documented in deploy/postwarden.yaml): the config file 1 MiB (the
shipped one, every key commented, is under 40 KiB; PyYAML with libyaml
composes about 0.5 MB/s on a loaded machine), each named file 16 MiB.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_CONFIG_SIZE = 1024 * 1024
MAX_NAMED_FILE_SIZE = 16 * 1024 * 1024


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _limit_text(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit} bytes"


def check_file(path: str, limit: int = MAX_NAMED_FILE_SIZE) -> None:
    """Raise OSError unless `path` is a readable regular file within `limit`."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _check_fd(fd, path, limit)
    finally:
        os.close(fd)


def read_file(path: str | os.PathLike[str], limit: int = MAX_NAMED_FILE_SIZE) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else OSError.

    Opened non-blocking, so a FIFO is refused instead of waiting for a
    writer; read with a bound, so a file growing while read is refused too.
    """
    name = os.fspath(path)
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _check_fd(fd, name, limit)
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, min(1024 * 1024, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise _too_large(name, limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_fd(fd: int, path: str, limit: int) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, f"{_kind(st.st_mode)}, not a regular file", path)
    if st.st_size > limit:
        raise _too_large(path, limit)


def _too_large(path: str, limit: int) -> OSError:
    return OSError(errno.EFBIG, f"larger than the {_limit_text(limit)} limit", path)
