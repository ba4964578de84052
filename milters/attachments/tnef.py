"""Attachments inside a TNEF stream (Outlook's `winmail.dat`, application/ms-tnef).

[MS-OXTNEF] 2.1.3: a 4-byte signature 0x223E9F78, a 2-byte key, then
attributes, each: level (1 byte: 1 message, 2 attachment), ID (4 bytes, the
type in the high word), length (4), the data, a 2-byte checksum. Every
attachment starts with attAttachRendData; its file name is attAttachTitle
(an 8-bit string) and its bytes attAttachData. Only those three are read;
MAPI properties (and with them long file names) are not decoded, so the
8.3-style title is the name classes see. Reading is bounded like archive
members: at most `max_members` attachments and `max_size` bytes each.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SIGNATURE = b"\x78\x9f\x3e\x22"
LEVEL_ATTACHMENT = 2
ATT_ATTACH_REND_DATA = 0x00069002
ATT_ATTACH_TITLE = 0x00018010
ATT_ATTACH_DATA = 0x0006800F


@dataclass
class TnefAttachment:
    name: str = ""
    data: bytes = b""
    size: int = 0
    truncated: bool = False


@dataclass
class TnefContents:
    attachments: list[TnefAttachment] = field(default_factory=list)
    damaged: str = ""
    too_many: bool = False


def read_tnef(data: bytes, max_members: int, max_size: int) -> TnefContents:
    """The attachments of a TNEF stream; a damaged stream yields what came before."""
    out = TnefContents()
    if not data.startswith(SIGNATURE):
        out.damaged = "no TNEF signature"
        return out
    pos = 6
    current: TnefAttachment | None = None
    while pos + 9 <= len(data):
        level = data[pos]
        attr_id, length = struct.unpack_from("<II", data, pos + 1)
        start = pos + 9
        end = start + length
        if end + 2 > len(data):
            out.damaged = f"attribute {attr_id:#010x} runs past the end"
            end = len(data)
        if level == LEVEL_ATTACHMENT:
            if attr_id == ATT_ATTACH_REND_DATA:
                if len(out.attachments) >= max_members:
                    out.too_many = True
                    break
                current = TnefAttachment()
                out.attachments.append(current)
            elif current is not None and attr_id == ATT_ATTACH_TITLE:
                current.name = data[start:end].split(b"\0", 1)[0].decode("cp1252", "replace")
            elif current is not None and attr_id == ATT_ATTACH_DATA:
                current.size = end - start
                current.truncated = current.size > max_size
                current.data = data[start : start + min(current.size, max_size)]
        pos = end + 2
    return out
