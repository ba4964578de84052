"""Replace parts of a message body with a short text/plain notice.

The milter protocol can only replace the whole body (SMFIR_REPLBODY,
`smfi_replacebody`), so the new body is the old one with each removed
part's bytes (its MIME headers and content, between the boundary lines)
swapped for a notice part. Boundaries, the other parts and the epilogue
stay byte for byte, so the result is valid MIME whenever the input was
(RFC 2046 section 5.1.1: the CRLF before a delimiter belongs to the
delimiter, and spans end before it). A uuencoded block inside a plain text
part is replaced by one notice line in that text. When the file is the
message body itself, the message's own Content-* headers must change too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from milters.attachments.walk import Span
from milters.message import HeaderEdit, HeaderOp

NOTICE_TYPE = "text/plain; charset=us-ascii"


@dataclass(frozen=True, slots=True)
class Removal:
    span: Span
    notice: str  # one line, ASCII


def safe_name(name: str, limit: int = 120) -> str:
    """A file name shown in a notice, header or reply: printable ASCII only
    (a right-to-left override must not reorder our own text), quotes and
    backslashes escaped, cut to `limit`."""
    out = []
    for ch in name:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    text = "".join(out)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def notice_part(text: str) -> bytes:
    return (
        f"Content-Type: {NOTICE_TYPE}\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "Content-Disposition: inline\r\n"
        "\r\n"
        f"{text}\r\n"
    ).encode("ascii", "replace")


def rebuild(body: bytes, removals: Sequence[Removal]) -> bytes:
    """The body with each removal's span replaced; nested spans (a part
    inside a removed part) are covered by the outer one."""
    outer: list[Removal] = []
    for r in sorted(removals, key=lambda r: (r.span.start, -r.span.end)):
        if outer and r.span.start < outer[-1].span.end:
            continue
        outer.append(r)
    out = bytearray()
    pos = 0
    for r in outer:
        out += body[pos : r.span.start]
        if r.span.inline:
            out += f"[{r.notice}]".encode("ascii", "replace")
        else:
            out += notice_part(r.notice)
        pos = r.span.end
    out += body[pos:]
    return bytes(out)


def whole_body_edits(existing: Sequence[str]) -> tuple[HeaderEdit, ...]:
    """Header edits that make the message itself the notice: its
    Content-Type becomes text/plain and the old encoding and disposition
    go (`existing` = the Content-* header names present, lower case)."""
    edits = [HeaderEdit(HeaderOp.CHANGE, "Content-Type", NOTICE_TYPE)]
    if "content-transfer-encoding" in existing:
        edits.append(HeaderEdit(HeaderOp.CHANGE, "Content-Transfer-Encoding", "7bit"))
    if "content-disposition" in existing:
        edits.append(HeaderEdit(HeaderOp.DELETE, "Content-Disposition"))
    return tuple(edits)


def whole_body_notice(text: str) -> bytes:
    return f"{text}\r\n".encode("ascii", "replace")
