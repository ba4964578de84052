"""Messages to learn from: files, Maildir folders, plain directories, mbox
files and stdin, each yielded with where it came from, or with the reason
it cannot be learned.

Nothing here raises for bad input: an unreadable file, a file that vanishes
(Dovecot moves Maildir files from new/ to cur/ while we read), binary data
or random bytes become a `Skipped` item with a reason, and the rest of the
run goes on.

mbox (mbox(5), RFC 4155): a message starts at a line `From <sender> <date>`
at the start of the file or after a blank line. A line that begins with
"From " but does not look like that separator (an unescaped "From " in a
body, a broken separator) stays part of the message it is in.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Bigger than any mail a server accepts by default (Postfix message_size_limit
# is 10 MB; the milter keeps max_body_size).
MAX_MESSAGE = 32 * 1024 * 1024
# RFC 5322 section 2.1.1 allows 998 characters per line; real mail (HTML
# without line breaks) goes far beyond, but a megabyte-long line is not mail.
MAX_LINE = 1024 * 1024
_HEADER_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]{1,76}:")
_MBOX_SEPARATOR = re.compile(
    rb"From \S+\s+(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct"
    rb"|Nov|Dec) [ \d]\d \d\d:\d\d(?::\d\d)?(?: [+-]?\w+)? \d{4}"
)


@dataclass(frozen=True, slots=True)
class Found:
    origin: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class Skipped:
    origin: str
    reason: str


Item = Found | Skipped
VANISHED = "vanished while reading (deleted or moved away)"


def check_message(raw: bytes) -> str | None:
    """Why these bytes cannot be learned as a mail message, or None."""
    if not raw.strip():
        return "empty"
    if len(raw) > MAX_MESSAGE:
        return f"larger than {MAX_MESSAGE // (1024 * 1024)} MB"
    start = raw
    if start.startswith(b"From "):
        start = start[start.find(b"\n") + 1 :] if b"\n" in start else b""
    if not _HEADER_LINE.match(start):
        return "not a mail message (no header block)"
    head_end = start.find(b"\n\n")
    head = start if head_end < 0 else start[:head_end]
    if b"\0" in head:
        return "not a mail message (NUL bytes in the header)"
    longest = max((len(line) for line in _long_lines(raw)), default=0)
    if longest > MAX_LINE:
        return f"a line of {longest} bytes (RFC 5322 allows 998)"
    return None


def _long_lines(raw: bytes) -> Iterator[bytes]:
    """Only lines that might be over MAX_LINE (cheap for normal mail)."""
    if len(raw) <= MAX_LINE:
        return
    start = 0
    while start < len(raw):
        end = raw.find(b"\n", start)
        if end < 0:
            end = len(raw)
        if end - start > MAX_LINE:
            yield raw[start:end]
        start = end + 1


def _item(origin: str, raw: bytes) -> Item:
    reason = check_message(raw)
    return Skipped(origin, reason) if reason else Found(origin, raw)


def read_stdin(stream: BinaryIO) -> Iterator[Item]:
    """stdin is one message (what Dovecot's pipe and Postfix's pipe(8) give)."""
    yield _item("-", stream.read(MAX_MESSAGE + 1))


def iter_paths(paths: list[str], stdin: BinaryIO) -> Iterator[Item]:
    for p in paths:
        if p == "-":
            yield from read_stdin(stdin)
            continue
        yield from iter_path(Path(p))


def iter_path(path: Path) -> Iterator[Item]:
    try:
        st = path.stat()
    except FileNotFoundError:
        yield Skipped(str(path), "no such file or directory")
        return
    except OSError as exc:
        yield Skipped(str(path), f"cannot stat: {exc.strerror}")
        return
    if stat.S_ISDIR(st.st_mode):
        if is_maildir(path):
            yield from iter_maildir(path)
        else:
            yield from iter_directory(path)
        return
    if not stat.S_ISREG(st.st_mode):
        yield Skipped(str(path), "not a regular file")
        return
    raw = _read(path)
    if isinstance(raw, Skipped):
        yield raw
    elif is_mbox(raw):
        yield from iter_mbox(str(path), raw)
    else:
        yield _item(str(path), raw)


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def iter_maildir(path: Path) -> Iterator[Item]:
    """new/ and cur/ of one Maildir folder (not its subfolders: in Maildir++
    those are other mailboxes, like .Junk beside the inbox)."""
    seen: set[str] = set()  # unique parts: a file moved new/ -> cur/ is read once
    for sub in ("new", "cur"):
        try:
            names = sorted(os.listdir(path / sub))
        except OSError as exc:
            yield Skipped(str(path / sub), f"cannot list: {exc.strerror}")
            continue
        for name in names:
            unique = name.split(":", 1)[0]
            if name.startswith(".") or unique in seen:
                continue
            seen.add(unique)
            yield from _maildir_file(path, sub, name)


def _maildir_file(folder: Path, sub: str, name: str) -> Iterator[Item]:
    file = folder / sub / name
    raw = _read(file)
    if isinstance(raw, Skipped) and raw.reason == VANISHED:
        # An IMAP client saw it, so Dovecot moved new/NAME to cur/NAME:2,FLAGS
        # or renamed its flags: find it by its unique part.
        unique = name.split(":", 1)[0]
        try:
            moved = [n for n in os.listdir(folder / "cur") if n.split(":", 1)[0] == unique]
        except OSError:
            moved = []
        if moved and moved[0] != name:
            again = _read(folder / "cur" / moved[0])
            if not isinstance(again, Skipped):
                yield _item(str(folder / "cur" / moved[0]), again)
                return
        yield raw
        return
    if isinstance(raw, Skipped):
        yield raw
        return
    yield _item(str(file), raw)


def iter_directory(path: Path) -> Iterator[Item]:
    """Every regular file below a plain directory, one message each (a split
    folder, such as the shared corpus); hidden files are left out."""
    for root, dirs, files in os.walk(path, onerror=None):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            file = Path(root) / name
            raw = _read(file)
            if isinstance(raw, Skipped):
                yield raw
            elif is_mbox(raw):
                yield from iter_mbox(str(file), raw)
            else:
                yield _item(str(file), raw)


def _read(path: Path) -> bytes | Skipped:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return Skipped(str(path), "not a regular file")
        with open(fd, "rb") as f:
            data = f.read(MAX_MESSAGE + 1)
            if len(data) > MAX_MESSAGE:
                return Skipped(str(path), f"larger than {MAX_MESSAGE // (1024 * 1024)} MB")
            return data
    except FileNotFoundError:
        return Skipped(str(path), VANISHED)
    except IsADirectoryError:
        return Skipped(str(path), "is a directory")
    except OSError as exc:
        return Skipped(str(path), f"unreadable: {exc.strerror}")


def is_mbox(raw: bytes) -> bool:
    """An mbox file: it starts with a separator line and holds a second one.
    (A single message with its separator, as a split folder leaves it, is
    read as one message.)"""
    if not _MBOX_SEPARATOR.match(raw):
        return False
    return any(True for _ in _separators(raw, 1))


def _separators(raw: bytes, start: int) -> Iterator[int]:
    """Offsets of separator lines after `start` (each after a blank line, or
    after any line end: mutt and Thunderbird do not always leave a blank)."""
    pos = start
    while True:
        i = raw.find(b"\nFrom ", pos)
        if i < 0:
            return
        if _MBOX_SEPARATOR.match(raw, i + 1):
            yield i + 1
        pos = i + 1


def iter_mbox(origin: str, raw: bytes) -> Iterator[Item]:
    bounds = [0, *_separators(raw, 1), len(raw)]
    for n, (a, b) in enumerate(itertools.pairwise(bounds), start=1):
        chunk = raw[a:b]
        nl = chunk.find(b"\n")
        body = chunk[nl + 1 :] if nl >= 0 else b""
        # mboxrd/mboxo quoting: ">From " at a line start was "From ".
        body = re.sub(rb"(?m)^>(>*From )", rb"\1", body)
        yield _item(f"{origin}#{n}", body)
