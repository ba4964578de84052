"""What a file really is, from its first bytes: libmagic plus a few signatures.

libmagic (`python-magic`, file(1)'s database) names the MIME type and gives
a description for display. The decision about classes rests on `kind`,
taken from the file formats' own signatures checked here, because libmagic
answers differ between versions and need whole headers (a truncated ELF
header is "application/octet-stream" to libmagic, still an ELF to a
loader). The extension tables say what a name claims, so a mismatch
("report.pdf" holding a PE) can be reported.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import magic

SNIFF_BYTES = 64 * 1024  # what libmagic sees of each file

# Programs a click can start. `#!` scripts are reported (kind
# "shebang-script") but are not executables here: a mail client cannot run
# them, and mailing lists share them (the 2002 ham corpus has several).
EXECUTABLE_KINDS = frozenset(
    {"pe", "elf", "macho", "msi", "java-class", "jar", "apk", "dex", "lnk"}
)
# Archives in the `archives` class; zip/tar/gzip/bzip2/xz are looked into.
ARCHIVE_KINDS = frozenset(
    {"zip", "tar", "gzip", "bzip2", "xz", "rar", "7z", "cab", "ace", "arj", "lzh", "zstd", "iso"}
)
READABLE_ARCHIVES = frozenset({"zip", "tar", "gzip", "bzip2", "xz", "rar"})
OFFICE_KINDS = frozenset({"ooxml", "odf", "ole-document"})

# (offset, signature, kind) checked in order; the first match wins.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x7fELF", "elf"),
    (0, b"\xfe\xed\xfa\xce", "macho"),
    (0, b"\xfe\xed\xfa\xcf", "macho"),
    (0, b"\xce\xfa\xed\xfe", "macho"),
    (0, b"\xcf\xfa\xed\xfe", "macho"),
    (0, b"\xca\xfe\xba\xbe", "java-class"),  # also Mach-O fat; both executable
    (0, b"dex\n", "dex"),
    (0, b"L\x00\x00\x00\x01\x14\x02\x00", "lnk"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole"),
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),
    (0, b"PK\x07\x08", "zip"),
    (0, b"\x1f\x8b", "gzip"),
    (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"Rar!\x1a\x07", "rar"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"MSCF", "cab"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"),
    (0, b"\x60\xea", "arj"),
    (7, b"**ACE**", "ace"),
    (2, b"-lh", "lzh"),
    (257, b"ustar", "tar"),
    (0x8001, b"CD001", "iso"),
    (0, b"\x78\x9f\x3e\x22", "tnef"),
    (0, b"%PDF-", "pdf"),
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"GIF8", "gif"),
    (0, b"{\\rtf", "rtf"),
)

# What an extension claims, for the mismatch report (only unambiguous ones).
EXTENSION_KINDS = {
    "pdf": "pdf", "png": "png", "jpg": "jpeg", "jpeg": "jpeg", "gif": "gif", "rtf": "rtf",
    "zip": "zip", "gz": "gzip", "tgz": "gzip", "bz2": "bzip2", "xz": "xz", "rar": "rar",
    "7z": "7z", "cab": "cab", "tar": "tar", "exe": "pe", "dll": "pe", "scr": "pe",
    "doc": "ole", "xls": "ole", "ppt": "ole", "msi": "msi", "docx": "ooxml", "xlsx": "ooxml",
    "pptx": "ooxml", "docm": "ooxml", "xlsm": "ooxml", "pptm": "ooxml", "odt": "odf",
    "ods": "odf", "odp": "odf", "jar": "jar", "apk": "apk", "txt": "text", "csv": "text",
}  # fmt: skip
# Declared MIME types that make a claim (others, like octet-stream, do not).
DECLARED_KINDS = {
    "application/pdf": "pdf", "image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif",
    "application/zip": "zip", "application/x-zip-compressed": "zip", "application/gzip": "gzip",
    "application/x-gzip": "gzip", "application/msword": "ole", "text/plain": "text",
    "application/vnd.ms-excel": "ole", "application/rtf": "rtf",
}  # fmt: skip
# Kinds a claim is still met by (a docx is a zip, a doc is OLE, ...).
_COMPATIBLE = {
    "zip": {"ooxml", "odf", "jar", "apk"},
    "ole": {"ole-document", "msi"},
    "ooxml": {"zip"},
    "odf": {"zip"},
    "jar": {"zip"},
    "apk": {"zip"},
    "text": {"text", "empty", "unknown"},
    "msi": {"ole"},
}


@dataclass(frozen=True, slots=True)
class FileType:
    """`kind` drives classes; `mime`/`description` are libmagic's words."""

    kind: str
    mime: str
    description: str

    def claimed_by(self, claim: str) -> bool:
        return claim == self.kind or self.kind in _COMPATIBLE.get(claim, ())


class _Magic(threading.local):
    """One libmagic handle pair per thread (a magic_t is not thread-safe)."""

    def __init__(self) -> None:
        self.mime = magic.Magic(mime=True)
        self.text = magic.Magic()


# Kinds whose signature settles the type: libmagic (about a millisecond a
# call) is skipped for them. Their members or structure are examined by
# `archives`/`classes` anyway.
_KNOWN = {
    "zip": ("application/zip", "Zip archive data"),
    "gzip": ("application/gzip", "gzip compressed data"),
    "bzip2": ("application/x-bzip2", "bzip2 compressed data"),
    "xz": ("application/x-xz", "XZ compressed data"),
    "rar": ("application/x-rar", "RAR archive data"),
    "7z": ("application/x-7z-compressed", "7-zip archive data"),
    "pdf": ("application/pdf", "PDF document"),
    "tnef": ("application/vnd.ms-tnef", "Transport Neutral Encapsulation Format"),
    "png": ("image/png", "PNG image data"),
    "jpeg": ("image/jpeg", "JPEG image data"),
    "gif": ("image/gif", "GIF image data"),
}


_MAGIC = _Magic()


def sniff(data: bytes) -> str:
    """The kind by signature, '' when none matched."""
    if data[:2] == b"MZ":
        return "pe"
    for offset, signature, kind in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return kind
    if data[:2] == b"#!":
        return "shebang-script"
    return ""


def detect(data: bytes) -> FileType:
    """The file's type by content (never by name)."""
    if not data:
        return FileType("empty", "application/x-empty", "empty")
    head = data[:SNIFF_BYTES]
    kind = sniff(head)
    if kind in _KNOWN:
        mime, description = _KNOWN[kind]
        return FileType(kind, mime, description)
    try:
        mime = _MAGIC.mime.from_buffer(head)
        # The description is for people; only programs and OLE files need it
        # (it names the PE subsystem, or an MSI inside an OLE container).
        described = kind in EXECUTABLE_KINDS or kind == "ole"
        description = _MAGIC.text.from_buffer(head) if described else mime
    except magic.MagicException as exc:  # a damaged file can upset a magic test
        mime, description = "application/octet-stream", f"unknown ({exc})"
    if kind == "ole" and ("MSI Installer" in description or mime == "application/x-msi"):
        kind = "msi"
    if not kind:
        kind = "text" if mime.startswith("text/") else "unknown"
    return FileType(kind, mime, description)


def extension(name: str) -> str:
    """The last extension as Windows reads it: trailing dots and spaces
    dropped ("evil.exe. " opens as evil.exe), lower case, no dot."""
    stem = name.rstrip(". \t").rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    return stem.rpartition(".")[2].lower() if "." in stem else ""


def extensions(name: str) -> list[str]:
    """Every dotted suffix of the name, last one last ("a.pdf.exe" -> pdf, exe)."""
    stem = name.rstrip(". \t").rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    return [p.strip().lower() for p in stem.split(".")[1:]]
