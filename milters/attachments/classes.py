"""Which blockable classes one file belongs to, with the reason for each.

The classes are those of NethServer's attachment filter (executables,
archives, a custom list), refined as amavisd-new's banned-files rules and
Rspamd's mime_types module do: by content first, so a renamed executable
is still one; Office files are documents, not archives (a docx is a zip);
macros, encryption and misleading names are classes of their own.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from milters.attachments.archives import Listing
from milters.attachments.filetype import (
    ARCHIVE_KINDS,
    DECLARED_KINDS,
    EXECUTABLE_KINDS,
    EXTENSION_KINDS,
    READABLE_ARCHIVES,
    FileType,
    extension,
    extensions,
)
from postwarden.config.sections.attachments import AttachmentsMilterSettings

CLASSES = (
    "executables",
    "archives",
    "opaque_archives",
    "macro_documents",
    "encrypted_archives",
    "double_extensions",
    "custom",
    "office_documents",
    "type_mismatch",
)
# Bidirectional controls reorder what a user sees: "invoice\u202efdp.exe"
# shows as "invoiceexe.pdf" (Unicode TR 9; CVE-style "RLO trick").
_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_PADDING = re.compile(r"[\s\u00a0\u2000-\u200b\u3000_]{5,}\.[^.]+$")
# OLE directory entries are UTF-16LE names; a VBA project has these storages
# ([MS-OVBA] 2.2: "_VBA_PROJECT" stream inside the "VBA" storage).
_VBA_MARKERS = ("_VBA_PROJECT".encode("utf-16-le"), "Macros".encode("utf-16-le"))
_OOXML_MACRO_EXTS = ("docm", "xlsm", "pptm", "dotm", "xltm", "potm", "ppsm", "xlam", "ppam")


@dataclass(frozen=True, slots=True)
class Hit:
    cls: str
    why: str


def ole_has_macros(data: bytes) -> bool:
    """An OLE compound file (.doc/.xls) holding a VBA project."""
    return any(marker in data for marker in _VBA_MARKERS)


def classify(
    name: str,
    declared_type: str,
    ftype: FileType,
    listing: Listing | None,
    data: bytes,
    settings: AttachmentsMilterSettings,
) -> list[Hit]:
    """Every class the file is in; the caller drops the ones set to off."""
    hits: list[Hit] = []
    ext = extension(name)
    kind = ftype.kind
    container = listing.container if listing else ""
    if container in ("jar", "apk", "ooxml", "odf"):
        kind = container
    elif kind == "ole" and not ole_has_macros(data) and ext in ("doc", "xls", "ppt", "dot"):
        kind = "ole-document"

    # executables: by content, then scripts by name (no magic to go by).
    if kind in EXECUTABLE_KINDS:
        hits.append(Hit("executables", f"{kind} content ({ftype.description[:60]})"))
    elif ext in settings.script_extensions:
        hits.append(Hit("executables", f".{ext} file"))

    # macros: OOXML vbaProject.bin (also when named .docx), ODF Basic, OLE VBA.
    macros = bool(listing and listing.macros) or (kind == "ole" and ole_has_macros(data))
    if macros:
        hits.append(Hit("macro_documents", f"{container or 'OLE'} document with macros"))
    elif ext in _OOXML_MACRO_EXTS and container == "ooxml":
        hits.append(Hit("macro_documents", f".{ext} (macro-enabled format)"))
    if container in ("ooxml", "odf") or kind in ("ole-document", "ole"):
        hits.append(Hit("office_documents", f"{container or 'OLE'} document"))

    # archives: a real archive (documents and programs are not).
    if kind in ARCHIVE_KINDS and container not in ("ooxml", "odf", "jar", "apk"):
        hits.append(Hit("archives", f"{kind} archive"))
        if kind not in READABLE_ARCHIVES:
            hits.append(Hit("opaque_archives", f"{kind}: not looked into"))
    elif kind == "unknown" and ext in settings.archive_extensions:
        hits.append(Hit("archives", f".{ext} file"))
        hits.append(Hit("opaque_archives", f".{ext}: content not recognised"))
    if listing and listing.unread:
        hits.append(Hit("opaque_archives", f"{len(listing.unread)} members checked by name only"))
    if listing and listing.unreadable:
        hits.append(Hit("opaque_archives", f"unreadable: {listing.unreadable[:80]}"))
    if listing and listing.encrypted:
        hits.append(Hit("encrypted_archives", f"encrypted: {listing.encrypted[0][:80]}"))

    # misleading names.
    if _BIDI.search(name):
        hits.append(Hit("double_extensions", "bidirectional control character in the name"))
    elif _PADDING.search(name):
        hits.append(Hit("double_extensions", "whitespace padding before the extension"))
    else:
        exts = extensions(name)
        decoy = exts[-2] if len(exts) >= 2 else ""
        if (
            decoy
            and exts[-1] in settings.script_extensions
            and decoy.isalnum()
            and len(decoy) <= 5
            and not decoy.isdigit()
        ):
            hits.append(Hit("double_extensions", f".{decoy}.{exts[-1]}"))

    # custom lists by MIME type (detected or declared) or extension.
    custom = [t.lower() for t in settings.custom_types]
    if any(fnmatch.fnmatchcase(t, pat) for pat in custom for t in (ftype.mime, declared_type)):
        hits.append(Hit("custom", f"type {ftype.mime}"))
    elif ext and ext in {e.lower().lstrip(".") for e in settings.custom_extensions}:
        hits.append(Hit("custom", f".{ext} file"))

    mismatch = type_mismatch(name, declared_type, ftype, kind)
    if mismatch:
        hits.append(Hit("type_mismatch", mismatch))
    return hits


def type_mismatch(name: str, declared_type: str, ftype: FileType, kind: str) -> str:
    """Where the content disagrees with the extension or the declared type."""
    if kind == "unread":
        return ""  # known by name only: nothing to compare
    real = FileType(kind, ftype.mime, ftype.description)
    claim = EXTENSION_KINDS.get(extension(name))
    if claim and ftype.kind != "empty" and not real.claimed_by(claim):
        return f"named .{extension(name)} but is {kind} ({ftype.mime})"
    declared = DECLARED_KINDS.get(declared_type.lower())
    if declared and declared != "text" and ftype.kind != "empty" and not real.claimed_by(declared):
        return f"declared {declared_type} but is {kind} ({ftype.mime})"
    if declared == "text" and kind in EXECUTABLE_KINDS:
        return f"declared {declared_type} but is {kind}"
    return ""
