"""Split a message into the lines Postfix's four check classes see, raw and decoded.

Raw (cleanup(8) with MIME processing on, header_checks(5)):

* primary headers: header_checks, except the MIME headers (Content-*,
  MIME-Version), which go to mime_header_checks; one *logical* header at a
  time, folding kept as "\\n" + whitespace, cut at header_size_limit bytes.
* headers of every MIME part: mime_header_checks.
* headers of an attached message/rfc822: nested_header_checks (their MIME
  headers: mime_header_checks).
* everything else, boundaries included: body_checks, one physical line at a
  time in chunks of line_length_limit bytes, up to body_checks_size_limit
  bytes per part.

Decoded (postwarden only): RFC 2047 encoded words decoded to Unicode and
folding removed (RFC 5322 section 2.2.3 unfolding); text parts decoded from
quoted-printable/base64 and their charset, HTML reduced to its text.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import quopri
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from enum import StrEnum

from milters.html_text import html_to_text


class LineClass(StrEnum):
    HEADER = "header_checks"
    MIME = "mime_header_checks"
    NESTED = "nested_header_checks"
    BODY = "body_checks"


_MIME_HEADERS = {
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "content-description",
    "content-id",
    "mime-version",
}


@dataclass(frozen=True, slots=True)
class RawLine:
    cls: LineClass
    text: bytes
    header_index: int = -1  # index in Message.headers for primary headers
    start: int = -1  # byte span in the body, line end excluded (-1: not in the body)
    end: int = -1


def is_mime_header(name: str) -> bool:
    return name.strip().lower() in _MIME_HEADERS


_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"]*)"|([^\s;]+))', re.IGNORECASE)


def _boundary(content_type: bytes) -> bytes | None:
    if not content_type.lower().lstrip().startswith(b"multipart/"):
        return None
    m = _BOUNDARY.search(content_type)
    if not m:
        return None
    return m.group(1) if m.group(1) is not None else m.group(2)


def body_lines(
    body: bytes,
    top_content_type: bytes,
    *,
    line_limit: int,
    part_limit: int,
) -> Iterator[RawLine]:
    """Walk the body like Postfix's MIME state machine (simplified, bounded)."""
    boundaries: list[bytes] = []
    b = _boundary(top_content_type)
    if b:
        boundaries.append(b)
    state = "body"  # "body" | "part_headers" | "nested_headers"
    part_bytes = 0
    pending_ct = b""
    pending_nested = False
    current: bytearray | None = None
    current_cls = LineClass.MIME
    current_start = 0
    current_end = 0

    def flush_header() -> Iterator[RawLine]:
        nonlocal current, pending_ct, pending_nested, current_start, current_end
        if current is None:
            return
        name, _, value = bytes(current).partition(b":")
        lname = name.strip().lower().decode("latin-1")
        if lname == "content-type":
            pending_ct = value
            if value.strip().lower().startswith(b"message/rfc822"):
                pending_nested = True
        cls = current_cls
        if cls is LineClass.NESTED and lname in _MIME_HEADERS:
            cls = LineClass.MIME
        yield RawLine(cls, bytes(current), start=current_start, end=current_end)
        current = None

    pos = 0
    for raw in body.split(b"\n"):
        here = pos
        pos += len(raw) + 1
        line = raw[:-1] if raw.endswith(b"\r") else raw
        line_end = here + len(line)
        if state in ("part_headers", "nested_headers"):
            if line[:1] in (b" ", b"\t") and current is not None:
                current += b"\n" + line
                current_end = line_end
                continue
            yield from flush_header()
            if line == b"":
                nb = _boundary(pending_ct)
                if nb:
                    boundaries.append(nb)
                if pending_nested and state == "part_headers":
                    state, current_cls = "nested_headers", LineClass.NESTED
                else:
                    state = "body"
                pending_ct, pending_nested, part_bytes = b"", False, 0
                continue
            if b":" in line:
                current = bytearray(line)
                current_start, current_end = here, line_end
                continue
            state = "body"  # not a header: the part body starts here
        if boundaries and line.startswith(b"--"):
            hit = next((bd for bd in reversed(boundaries) if line.startswith(b"--" + bd)), None)
            if hit is not None:
                yield RawLine(LineClass.BODY, line[:line_limit], start=here, end=line_end)
                if line.rstrip().endswith(b"--" + hit + b"--") or line.rstrip() == (
                    b"--" + hit + b"--"
                ):
                    while boundaries and boundaries[-1] != hit:
                        boundaries.pop()
                    if boundaries:
                        boundaries.pop()
                    state = "body"
                else:
                    while boundaries and boundaries[-1] != hit:
                        boundaries.pop()
                    state, current_cls = "part_headers", LineClass.MIME
                part_bytes = 0
                continue
        if part_bytes >= part_limit:
            continue
        room = part_limit - part_bytes
        part_bytes += len(line) + 1
        if not line:
            continue  # Postfix: empty lines never match
        # body_checks_size_limit bounds the inspected bytes, even within one line.
        for start in range(0, min(len(line), max(room, 1)), line_limit):
            chunk_end = min(start + line_limit, len(line))
            yield RawLine(
                LineClass.BODY, line[start:chunk_end], start=here + start, end=here + chunk_end
            )
    yield from flush_header()


# -- decoding ----------------------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(\?=)[ \t\r\n]+(=\?)")


def unfold(value: str) -> str:
    """RFC 5322 section 2.2.3: remove CRLF (or LF) before whitespace."""
    return value.replace("\r\n", "\n").replace("\n ", " ").replace("\n\t", "\t").replace("\n", "")


def decode_words(value: str) -> str:
    """RFC 2047 encoded words to Unicode; a broken word stays as written."""
    if "=?" not in value:
        return value
    value = _BETWEEN_WORDS.sub(r"\1\2", value)  # whitespace between words is dropped
    return _ENCODED_WORD.sub(_decode_one, value)


def _decode_one(m: re.Match[str]) -> str:
    charset, enc, text = m.group(1).split("*", 1)[0], m.group(2).upper(), m.group(3)
    try:
        if enc == "B":
            data = base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
        else:
            data = quopri.decodestring(
                text.replace("_", " ").encode("ascii", "replace"), header=True
            )
        try:
            codecs.lookup(charset)
        except LookupError:
            charset = "utf-8"
        return data.decode(charset, "replace")
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return m.group(0)


def decoded_header(name: str, raw_value: str) -> str:
    """`Name: value` unfolded and decoded; 8-bit bytes read as UTF-8 (lossy)."""
    value = raw_value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return f"{name}: {decode_words(unfold(value))}"


def html_text(markup: str) -> str:
    """Visible text of an HTML part (linear time; see milters/html_text.py)."""
    return html_to_text(markup)


def decoded_body_lines(parsed: EmailMessage, part_limit: int) -> Iterator[tuple[str, str]]:
    """(part description, line) for every text part, decoded; HTML as text."""
    for part in parsed.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if part.get_content_disposition() == "attachment":
            continue
        try:
            payload = part.get_payload(decode=True)
        except Exception:  # a broken part must not cost the verdict
            continue
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            codecs.lookup(charset)
        except LookupError:
            charset = "utf-8"
        text = payload[: part_limit * 4].decode(charset, "replace")
        if part.get_content_subtype() == "html":
            text = html_text(text)
        kind = part.get_content_type()
        size = 0
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            size += len(line)
            if size > part_limit:
                break
            yield kind, line
