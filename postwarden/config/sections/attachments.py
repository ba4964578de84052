"""`milters.attachments`: settings of the attachments milter (milters/attachments).

Files are classed by what they are (libmagic and the file's own structure),
not by what they claim to be; each class has one action. The shipped
defaults block executables and script files by reject (also inside archives,
renamed, or behind a double extension), look into archives without blocking
them, let documents pass, and quarantine a message that exceeds a limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from postwarden.config.fields import setting
from postwarden.config.sections.common import MilterSettings
from postwarden.config.units import Duration, Size, SocketAddress


class ClassAction(StrEnum):
    """What a class hit does to the message, mildest first.

    pass: not acted on and not listed in the header; warn: listed in the
    findings header and logged; strip: the part is replaced by a short
    text/plain notice; quarantine: Postfix HOLD; reject: 550 5.7.1 naming
    the file and the class.
    """

    OFF = "pass"
    WARN = "warn"
    STRIP = "strip"
    QUARANTINE = "quarantine"
    REJECT = "reject"

    @property
    def severity(self) -> int:
        return list(ClassAction).index(self)


# Script and installer types without reliable magic, recognised by name
# (the list; Microsoft's "unsafe file types" for Outlook adds the rest).
SCRIPT_EXTENSIONS = (
    "js", "jse", "vbs", "vbe", "wsf", "wsh", "wsc", "hta", "bat", "cmd", "ps1", "psm1",
    "scr", "pif", "lnk", "reg", "iso", "img", "vhd", "vhdx", "com", "cpl", "msc", "msi",
    "msp", "inf", "jar", "apk", "appx", "msix", "application", "gadget", "scf", "url",
    "xll", "exe", "dll", "sys", "chm", "ocx",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClassActions:
    """One action per class (see ClassAction)."""

    executables: ClassAction = setting(
        ClassAction.REJECT, doc="PE/ELF/Mach-O/MSI/Java/apk by content, scripts by name"
    )
    archives: ClassAction = setting(ClassAction.OFF, doc="zip rar 7z gzip bzip2 xz tar cab ...")
    opaque_archives: ClassAction = setting(ClassAction.OFF, doc="archives not looked into")
    macro_documents: ClassAction = setting(ClassAction.OFF, doc="OLE/OOXML/ODF with macros")
    encrypted_archives: ClassAction = setting(ClassAction.OFF, doc="password-protected members")
    double_extensions: ClassAction = setting(
        ClassAction.OFF, doc='"invoice.pdf.exe", right-to-left override, padded names'
    )
    custom: ClassAction = setting(ClassAction.OFF, doc="custom_types / custom_extensions")
    office_documents: ClassAction = setting(ClassAction.OFF, doc="docx xlsx pptx odt ...")
    type_mismatch: ClassAction = setting(
        ClassAction.OFF, doc="content type disagrees with the declared type or extension"
    )


@dataclass(frozen=True, slots=True)
class AttachmentLimits:
    """Bounds on the work one message may cause; exceeding one is a class of
    its own (`limits`), acted on with `action`."""

    action: ClassAction = setting(ClassAction.QUARANTINE)
    max_parts: int = setting(500, min=1, doc="MIME parts, uuencoded blocks and archive members")
    max_depth: int = setting(20, min=1, max=200, doc="multipart / message/rfc822 nesting")
    max_decoded_size: Size = setting(Size(25 * 1024 * 1024), min=1024, doc="one part, decoded")
    max_total_size: Size = setting(Size(100 * 1024 * 1024), min=1024, doc="all parts, decoded")
    archive_depth: int = setting(3, min=1, max=20, doc="archives inside archives looked into")
    max_archive_members: int = setting(1000, min=1, doc="members of one archive")
    max_expansion_ratio: int = setting(100, min=2, doc="unpacked/packed size of a member")
    max_member_size: Size = setting(Size(25 * 1024 * 1024), min=1024, doc="one member, unpacked")


@dataclass(frozen=True, slots=True)
class AttachmentAllow:
    """Allow-lists that win over every class (and over clamd)."""

    senders: tuple[str, ...] = setting(factory=tuple, doc="addresses or @domain, MAIL FROM")
    recipient_domains: tuple[str, ...] = setting(factory=tuple, doc="when all recipients match")
    sha256: tuple[str, ...] = setting(factory=tuple, doc="hex SHA-256 of a decoded file")

    def validate_node(self) -> list[str]:
        return [
            f"sha256: {h!r} is not 64 hex digits"
            for h in self.sha256
            if not re.fullmatch(r"[0-9a-fA-F]{64}", h)
        ]


class ClamavScan(StrEnum):
    """parts: each decoded file (and HTML text) on its own, so a verdict
    names the file; message: the raw message once (clamd decodes MIME)."""

    PARTS = "parts"
    MESSAGE = "message"


@dataclass(frozen=True, slots=True)
class ClamavSettings:
    """A clamd reached over its socket (INSTREAM); off unless enabled."""

    enabled: bool = setting(False)
    socket: SocketAddress = setting(SocketAddress("unix", path="/run/clamav/clamd.ctl"))
    action: ClassAction = setting(ClassAction.REJECT, doc="what a virus does")
    timeout: Duration = setting(Duration(10.0), min=0.1, doc="per scan, capped by the budget")
    max_scan_size: Size = setting(
        Size(25 * 1024 * 1024), min=1024, doc="bytes sent per part (clamd StreamMaxLength)"
    )
    scan: ClamavScan = setting(ClamavScan.PARTS)


@dataclass(frozen=True, slots=True)
class AttachmentsMilterSettings(MilterSettings):
    """Every key is documented in deploy/postwarden.yaml (milters.attachments)."""

    classes: ClassActions = setting(factory=ClassActions)
    script_extensions: tuple[str, ...] = setting(
        SCRIPT_EXTENSIONS, doc="names that are executables whatever their content"
    )
    archive_extensions: tuple[str, ...] = setting(
        ("zip", "rar", "7z", "gz", "tgz", "bz2", "xz", "tar", "cab", "ace", "arj", "lzh", "zst"),
        doc="names that are archives when libmagic cannot tell",
    )
    custom_types: tuple[str, ...] = setting(factory=tuple, doc="MIME types (type/* allowed)")
    custom_extensions: tuple[str, ...] = setting(factory=tuple, doc="extensions, no dot")
    look_into_archives: bool = setting(True)
    limits: AttachmentLimits = setting(factory=AttachmentLimits)
    allow: AttachmentAllow = setting(factory=AttachmentAllow)
    header: str = setting("X-Postwarden-Attachments", doc="lists findings; empty = none")
    clamav: ClamavSettings = setting(factory=ClamavSettings)
