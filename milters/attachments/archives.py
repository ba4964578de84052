"""List what is inside zip, tar, gzip, bzip2 and xz files, within limits.

Nothing is ever unpacked unbounded: a member is read to at most
`max_member_size` bytes, a member whose declared size is more than
`max_expansion_ratio` times its packed size (and over a megabyte) is not
read at all, an archive with more than `max_archive_members` members stops
being listed, and every read is counted against the message's total
decoded size. A zip bomb or a 42.zip-style tower therefore ends in a limit
hit, which the milter turns into a verdict (by default quarantine).

Zip files that are really documents or programs are recognised by their
members (ECMA-376 `[Content_Types].xml`, ODF `mimetype`, Java
`META-INF/MANIFEST.MF`, Android `AndroidManifest.xml` + `classes.dex`);
their members are not handed out as files of their own. Encrypted members
(zip general purpose flag bit 0, APPNOTE.TXT 4.4.4, or the AES method 99)
are listed as encrypted and never decrypted.

RAR archives (RAR 4 and 5) are listed with `rarfile`, which reads the
headers itself: member names, sizes and the encryption flag. Stored
members are read like zip members; compressed ones would need the non-free
unrar program, so they are classed by name only (and the archive is also
`opaque_archives`, to say not everything in it was seen).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import IO, Protocol

import rarfile

from postwarden.budget import Budget

# Errors a damaged or hostile archive makes the stdlib readers raise; the
# archive is then reported as unreadable (opaque), never as a crash.
ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    KeyError,
    IndexError,
    OverflowError,
    UnicodeError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    rarfile.Error,
)
_BIG = 1024 * 1024  # below this, high compression ratios are normal (text, zeros)
_AES = 99  # WinZip AES compression method (APPNOTE.TXT appendix E)


class Allowance(Protocol):
    """The message's decoded-bytes allowance (max_total_size), shared by
    MIME parts and archive members."""

    def remaining(self) -> int: ...

    def used(self, n: int) -> None: ...


@dataclass
class ArchiveLimits:
    max_members: int = 1000
    max_ratio: int = 100
    max_member_size: int = 25 * 1024 * 1024


@dataclass
class Member:
    name: str
    data: bytes
    size: int
    encrypted: bool = False
    truncated: bool = False
    unread: bool = False  # packed in a way we do not unpack: name only


@dataclass
class Listing:
    """What an archive holds; `container` says what the zip really is."""

    kind: str
    container: str = "archive"  # archive | ooxml | odf | jar | apk
    members: list[Member] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    encrypted: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    macros: bool = False
    unreadable: str = ""
    limit_hits: list[tuple[str, str]] = field(default_factory=list)


def list_archive(
    data: bytes, kind: str, name: str, limits: ArchiveLimits, allowance: Allowance, budget: Budget
) -> Listing:
    """The members of a `kind` archive (zip, tar, gzip, bzip2, xz)."""
    listing = Listing(kind)
    try:
        if kind == "zip":
            _zip(data, name, limits, allowance, budget, listing)
        elif kind == "tar":
            _tar(data, "r:", name, limits, allowance, budget, listing)
        elif kind in ("gzip", "bzip2", "xz"):
            _compressed(data, kind, name, limits, allowance, budget, listing)
        elif kind == "rar":
            _rar(data, name, limits, allowance, budget, listing)
    except ARCHIVE_ERRORS as exc:
        listing.unreadable = f"{type(exc).__name__}: {exc}"[:200]
    return listing


def _zip(
    data: bytes,
    name: str,
    limits: ArchiveLimits,
    allowance: Allowance,
    budget: Budget,
    out: Listing,
) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        names = {i.filename for i in infos}
        lower = {n.lower() for n in names}
        if "[content_types].xml" in lower:
            out.container = "ooxml"
            out.macros = any(n.endswith("vbaproject.bin") for n in lower)
        elif "mimetype" in names and _odf(zf):
            out.container = "odf"
            out.macros = any(n.startswith("basic/") and n.endswith(".xml") for n in lower) and any(
                n.startswith("basic/") and "script-lb" not in n for n in lower
            )
        elif "androidmanifest.xml" in lower and "classes.dex" in lower:
            out.container = "apk"
        elif "meta-inf/manifest.mf" in lower and any(n.endswith(".class") for n in lower):
            out.container = "jar"
        if len(infos) > limits.max_members:
            out.limit_hits.append(("max_archive_members", f"{name}: {len(infos)} members"))
            infos = infos[: limits.max_members]
        for info in infos:
            budget.check("attachments: archive")
            if info.is_dir():
                continue
            out.names.append(info.filename)
            encrypted = bool(info.flag_bits & 0x1) or info.compress_type == _AES
            if encrypted:
                out.encrypted.append(info.filename)
                out.members.append(Member(info.filename, b"", info.file_size, encrypted=True))
                continue
            if out.container != "archive":
                continue  # a document's or program's parts are not files of their own
            where = f"{name}/{info.filename}"
            if info.file_size > _BIG and info.file_size > limits.max_ratio * max(
                1, info.compress_size
            ):
                out.limit_hits.append(
                    ("max_expansion_ratio", f"{where}: {info.compress_size} -> {info.file_size}")
                )
                continue
            out.members.append(_read(zf.open(info), where, info.file_size, info.compress_size,
                                     limits, allowance, out))  # fmt: skip


def _rar(
    data: bytes,
    name: str,
    limits: ArchiveLimits,
    allowance: Allowance,
    budget: Budget,
    out: Listing,
) -> None:
    with rarfile.RarFile(io.BytesIO(data)) as rf:
        infos = rf.infolist()
        if not infos and rf.needs_password():
            out.encrypted.append("(encrypted file names)")
            return
        if len(infos) > limits.max_members:
            out.limit_hits.append(("max_archive_members", f"{name}: {len(infos)} members"))
            infos = infos[: limits.max_members]
        for info in infos:
            budget.check("attachments: archive")
            if info.is_dir() or not info.filename:
                continue
            out.names.append(info.filename)
            base = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
            if info.needs_password():
                out.encrypted.append(info.filename)
                out.members.append(Member(base, b"", info.file_size or 0, encrypted=True))
            elif info.compress_type == rarfile.RAR_M0:
                where = f"{name}/{info.filename}"
                member = _read(rf.open(info), where, info.file_size or 0, 0, limits, allowance, out)
                member.name = base
                out.members.append(member)
            else:
                out.unread.append(info.filename)
                out.members.append(Member(base, b"", info.file_size or 0, unread=True))


def _odf(zf: zipfile.ZipFile) -> bool:
    with zf.open("mimetype") as f:
        return f.read(80).startswith(b"application/vnd.oasis.opendocument")


def _read(
    stream: IO[bytes],
    where: str,
    declared: int,
    packed: int,
    limits: ArchiveLimits,
    allowance: Allowance,
    out: Listing,
) -> Member:
    """Read at most what the limits allow; a member found bigger than the
    limit (whatever its header said) is cut and reported."""
    cap = min(limits.max_member_size, allowance.remaining())
    with stream:
        data = stream.read(cap + 1)
    truncated = len(data) > cap
    if truncated:
        if cap == limits.max_member_size:
            out.limit_hits.append(("max_member_size", f"{where}: over {cap} bytes"))
        else:
            out.limit_hits.append(("max_total_size", f"{where}: decoded total over the limit"))
        data = data[:cap]
    if len(data) > _BIG and packed and len(data) > limits.max_ratio * packed:
        out.limit_hits.append(("max_expansion_ratio", f"{where}: {packed} -> {len(data)}+"))
    allowance.used(len(data))
    return Member(where.rsplit("/", 1)[-1], data, max(declared, len(data)), truncated=truncated)


def _tar(
    data: bytes,
    mode: str,
    name: str,
    limits: ArchiveLimits,
    allowance: Allowance,
    budget: Budget,
    out: Listing,
) -> None:
    out.kind = "tar"
    with tarfile.open(fileobj=io.BytesIO(data), mode=mode) as tf:  # type: ignore[call-overload]
        count = 0
        while True:
            budget.check("attachments: archive")
            info = tf.next()
            if info is None:
                return
            count += 1
            if count > limits.max_members:
                out.limit_hits.append(("max_archive_members", f"{name}: over {count - 1}"))
                return
            if not info.isfile():
                continue
            out.names.append(info.name)
            where = f"{name}/{info.name}"
            if info.size > _BIG and info.size > limits.max_ratio * max(1, len(data)):
                # Skipping it would mean inflating it: stop listing here.
                out.limit_hits.append(("max_expansion_ratio", f"{where}: {info.size} bytes"))
                return
            stream = tf.extractfile(info)
            if stream is None:
                continue
            member = _read(stream, where, info.size, 0, limits, allowance, out)
            member.name = info.name.rsplit("/", 1)[-1]
            out.members.append(member)


_OPENERS = {
    "gzip": ("r:gz", gzip.GzipFile, (".gz", ".tgz", ".gzip")),
    "bzip2": ("r:bz2", bz2.BZ2File, (".bz2", ".tbz", ".tbz2")),
    "xz": ("r:xz", lzma.LZMAFile, (".xz", ".txz")),
}


def _compressed(
    data: bytes,
    kind: str,
    name: str,
    limits: ArchiveLimits,
    allowance: Allowance,
    budget: Budget,
    out: Listing,
) -> None:
    """A compressed tar, or one compressed file (name without the suffix)."""
    mode, opener, suffixes = _OPENERS[kind]
    try:
        _tar(data, mode, name, limits, allowance, budget, out)
        return
    except tarfile.ReadError:
        out.kind = kind
        out.names.clear()
        out.members.clear()
    inner = name
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            inner = name[: -len(suffix)] + (".tar" if suffix.startswith(".t") else "")
            break
    else:
        inner = name.rpartition(".")[0] or name
    out.names.append(inner)
    stream = opener(fileobj=io.BytesIO(data))
    member = _read(
        stream, f"{name}/{inner}", limits.max_member_size, len(data), limits, allowance, out
    )
    member.name = inner
    out.members.append(member)
