"""Walk a message's MIME tree and hand out every file in it, decoded.

The walk works on the raw body bytes (a `memoryview`, so nested parts are
never copied) with an explicit stack, not the stdlib's recursive parser: a
1,000-level nested multipart costs a stack entry per level up to
`max_depth` and then one limit hit, never a RecursionError. Each leaf keeps
its byte range in the body, so `strip` can replace exactly that part.

What counts as a file here (RFC 2045-2049, RFC 2183):
- every non-multipart leaf: its Content-Transfer-Encoding undone (base64
  and quoted-printable tolerate broken input as mail clients do);
- the body of `message/rfc822` parts is walked as a message of its own,
  one level deeper;
- uuencoded `begin NNN name` ... `end` blocks inside text parts (and
  `x-uuencode` encoded parts).

File names come from Content-Disposition `filename` or Content-Type `name`,
with RFC 2231 continuations and charsets (`filename*0*=utf-8''...`) and RFC
2047 encoded words (`=?utf-8?B?...?=`, common in practice though RFC 2047
section 5 does not allow them inside quoted strings).
"""

from __future__ import annotations

import binascii
import email.header
import email.message
import email.utils
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from postwarden.budget import Budget

HEADER_BLOCK_LIMIT = 64 * 1024  # a MIME part's headers beyond this are body
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_UU_BEGIN = re.compile(rb"^begin(?:-base64)? +([0-7]{3,4}) +([^\r\n]+?)[ \t]*\r?$", re.M)
_UU_END = re.compile(rb"^end[ \t]*(?=\r?\n|\Z)", re.M)
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
# A Content-* header with its continuation lines (RFC 5322 2.2.3 folding).
_CONTENT_HEADER = re.compile(rb"^(content-[!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.M | re.I)
_FOLD = re.compile(rb"\r?\n(?=[ \t])")


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes `start:end` of the body a file occupies (its part headers
    included); `whole` means the file is the message body itself, so
    removing it also means changing the message's own Content-* headers."""

    start: int
    end: int
    whole: bool = False
    inline: bool = False  # a uuencoded block inside a text part


@dataclass(slots=True)
class Part:
    """One file found in the message, decoded (maybe cut at a limit)."""

    path: str  # MIME position like "2.1", "2.1/uu1" for a uuencoded block
    name: str
    declared_type: str
    data: bytes
    size: int  # decoded size, or an estimate when cut
    truncated: bool
    span: Span
    encoding: str = ""
    disposition: str = ""
    is_text_body: bool = False  # a text part with no name: the message text


@dataclass
class LimitHit:
    """A limit that stopped the walk (or part of it); a verdict of its own."""

    limit: str
    where: str
    detail: str


@dataclass
class WalkLimits:
    max_parts: int = 500
    max_depth: int = 20
    max_decoded_size: int = 25 * 1024 * 1024
    max_total_size: int = 100 * 1024 * 1024


@dataclass
class _Entity:
    view: memoryview  # headers + body of the entity (for the root: body only)
    base: int  # offset of `view` in the message body
    depth: int
    path: str
    header_bytes: bytes | None = None  # given for the root
    whole: bool = False
    span_override: Span | None = None  # inside a re-parsed (encoded) message


@dataclass
class Walker:
    """One message's walk; `limit_hits` fills as limits are met."""

    limits: WalkLimits
    budget: Budget = field(default_factory=Budget.unlimited)
    limit_hits: list[LimitHit] = field(default_factory=list)
    parts_seen: int = 0
    decoded_total: int = 0
    max_depth_seen: int = 0

    def hit(self, limit: str, where: str, detail: str) -> None:
        self.limit_hits.append(LimitHit(limit, where, detail))

    def count_part(self, where: str) -> bool:
        """Count one more part; False (and one limit hit) past max_parts."""
        self.parts_seen += 1
        if self.parts_seen == self.limits.max_parts + 1:
            self.hit("max_parts", where, f"more than {self.limits.max_parts} parts")
        return self.parts_seen <= self.limits.max_parts

    def claim(self, size: int, where: str) -> int:
        """How many decoded bytes a part may have (max_decoded_size, and what
        is left of max_total_size); records the limit when it cuts."""
        allowed = min(self.limits.max_decoded_size, self.limits.max_total_size - self.decoded_total)
        allowed = max(0, allowed)
        if size > allowed:
            if size > self.limits.max_decoded_size:
                self.hit("max_decoded_size", where, f"{size} bytes decoded")
            else:
                self.hit("max_total_size", where, f"over {self.limits.max_total_size} bytes")
        return min(size, allowed)

    def remaining(self) -> int:
        """Decoded bytes still allowed under max_total_size."""
        return max(0, self.limits.max_total_size - self.decoded_total)

    def used(self, n: int) -> None:
        self.decoded_total += n

    def walk(self, header_bytes: bytes, body: bytes) -> Iterator[Part]:
        """Every file of the message, in document order."""
        stack = [_Entity(memoryview(body), 0, 0, "1", header_bytes=header_bytes, whole=True)]
        while stack:
            self.budget.check("attachments: MIME walk")
            entity = stack.pop()
            if not self.count_part(entity.path):
                return
            yield from self._entity(entity, stack)

    def _entity(self, e: _Entity, stack: list[_Entity]) -> Iterator[Part]:
        if e.header_bytes is not None:
            headers, body, body_offset = e.header_bytes, e.view, 0
        else:
            headers, body, body_offset = split_part(e.view)
        info = _headers(headers)
        span = e.span_override or Span(e.base, e.base + len(e.view), whole=e.whole)
        self.max_depth_seen = max(self.max_depth_seen, e.depth)
        ctype = info.get_content_type()
        if ctype.startswith("multipart/"):
            boundary = info.get_param("boundary")
            if isinstance(boundary, str) and boundary:
                if e.depth >= self.limits.max_depth:
                    self.hit("max_depth", e.path, f"multipart nested deeper than {e.depth}")
                    return
                children = list(split_multipart(body, boundary.strip()))
                if not children:
                    # No delimiter at all: lenient clients show the body, so
                    # it is examined as one part rather than skipped.
                    children = [(0, len(body))] if _looks_like_headers(body) else []
                if not children:
                    ctype = "application/octet-stream"
                for i, (start, end) in reversed(list(enumerate(children, 1))):
                    stack.append(
                        _Entity(
                            body[start:end],
                            e.base + body_offset + start,
                            e.depth + 1,
                            f"{e.path}.{i}" if e.depth else str(i),
                            span_override=e.span_override,
                        )
                    )
                if children:
                    return
        cte = str(info.get("content-transfer-encoding", "")).strip().lower()
        if ctype == "message/rfc822":
            if e.depth >= self.limits.max_depth:
                self.hit("max_depth", e.path, f"message/rfc822 nested deeper than {e.depth}")
                return
            if cte in ("base64", "quoted-printable"):
                inner = memoryview(self._decode(body, cte, e.path))
                override: Span | None = span
                base = 0
            else:
                inner, override, base = body, e.span_override, e.base + body_offset
            stack.append(_Entity(inner, base, e.depth + 1, f"{e.path}.0", span_override=override))
            return
        name = filename(info)
        data = self._decode(body, cte, e.path)
        disposition = str(info.get("content-disposition", "")).split(";", 1)[0].strip().lower()
        is_text = ctype.startswith("text/") and not name and disposition != "attachment"
        yield Part(
            e.path,
            name,
            ctype,
            data,
            len(data),
            False,
            span,
            encoding=cte,
            disposition=disposition,
            is_text_body=is_text,
        )
        if ctype.startswith("text/") or cte in ("x-uuencode", "uuencode", "x-uue"):
            # Positions inside `data` equal positions in the body only when
            # nothing was decoded; otherwise stripping replaces the whole part.
            raw = cte in ("", "7bit", "8bit", "binary")
            offset = e.base + body_offset
            for i, (uu_name, uu_data, start, end) in enumerate(uudecode_blocks(data), 1):
                where = f"{e.path}/uu{i}"
                if not self.count_part(where):
                    return
                inline = Span(offset + start, offset + end, inline=True)
                yield Part(
                    where,
                    uu_name,
                    "",
                    uu_data,
                    len(uu_data),
                    False,
                    inline if raw and e.span_override is None else span,
                    encoding="uuencode",
                )

    def _decode(self, body: memoryview, cte: str, where: str) -> bytes:
        """Undo the transfer encoding, at most the bytes `claim` allows."""
        if cte == "base64":
            estimate = len(body) * 3 // 4
            allowed = self.claim(estimate, where)
            chunk = body if allowed >= estimate else body[: (allowed * 4 // 3) + 4]
            data = b64decode(bytes(chunk))
        elif cte == "quoted-printable":
            allowed = self.claim(len(body), where)
            data = binascii.a2b_qp(bytes(body[:allowed]))
        else:
            allowed = self.claim(len(body), where)
            data = bytes(body[:allowed])
        data = data[:allowed]
        self.decoded_total += len(data)
        return data


def split_part(view: memoryview) -> tuple[bytes, memoryview, int]:
    """A MIME entity -> (header bytes, body view, body offset in the entity)."""
    if bytes(view[:2]) == b"\r\n":
        return b"", view[2:], 2
    if bytes(view[:1]) == b"\n":
        return b"", view[1:], 1
    m = _HEADER_END.search(view, 0, min(len(view), HEADER_BLOCK_LIMIT))
    if m is None:
        if len(view) < HEADER_BLOCK_LIMIT and _looks_like_headers(view):
            return bytes(view), view[len(view) :], len(view)
        return b"", view, 0
    return bytes(view[: m.start() + 2]), view[m.end() :], m.end()


def _looks_like_headers(view: memoryview) -> bool:
    first = bytes(view[:200]).split(b"\n", 1)[0]
    return re.match(rb"^[!-9;-~]+:", first) is not None


def split_multipart(body: memoryview, boundary: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each body part between `--boundary` lines (RFC 2046
    section 5.1.1: the CRLF before a delimiter belongs to the delimiter).
    A missing close delimiter ends the last part at the end of the body."""
    try:
        b = boundary.encode("ascii")
    except UnicodeEncodeError:
        b = boundary.encode("utf-8", "surrogateescape")
    delimiter = re.compile(rb"^--" + re.escape(b) + rb"(--)?[ \t]*\r?$", re.M)
    start: int | None = None
    for m in delimiter.finditer(body):
        if start is not None:
            end = m.start()
            if end > start and bytes(body[end - 1 : end]) == b"\n":
                end -= 1
                if end > start and bytes(body[end - 1 : end]) == b"\r":
                    end -= 1
            yield start, max(start, end)
        if m.group(1):  # close delimiter: the epilogue follows
            return
        start = m.end()
        if bytes(body[start : start + 2]) == b"\r\n":
            start += 2
        elif bytes(body[start : start + 1]) == b"\n":
            start += 1
    if start is not None and start < len(body):
        yield start, len(body)


def _headers(raw: bytes) -> email.message.Message:
    """The part's Content-* headers as a stdlib Message (for its RFC 2045 /
    RFC 2231 parameter parsing); the other headers are not needed here.
    UTF-8 header bytes (RFC 6532) become text; the stdlib's bytes parser
    would turn them into U+FFFD in parameter values."""
    msg = email.message.Message()
    for m in _CONTENT_HEADER.finditer(raw):
        name = m.group(1).decode("ascii")
        value = _FOLD.sub(b" ", m.group(2)).strip()
        msg[name] = value.decode("utf-8", "surrogateescape")
    return msg


def filename(info: email.message.Message) -> str:
    """The part's file name: Content-Disposition filename, else Content-Type
    name; RFC 2231 (the stdlib joins continuations and decodes charsets)
    and RFC 2047 encoded words undone."""
    try:
        raw = info.get_filename() or info.get_param("name")
    except (ValueError, LookupError, TypeError, IndexError):
        return ""
    if isinstance(raw, tuple):  # an undecoded RFC 2231 triple
        raw = email.utils.collapse_rfc2231_value(raw)
    name = str(raw or "")
    if any("\udc80" <= c <= "\udcff" for c in name):
        # Raw 8-bit bytes in the header (RFC 6532 UTF-8, or a legacy charset).
        octets = name.encode("ascii", "surrogateescape")
        try:
            name = octets.decode("utf-8")
        except UnicodeDecodeError:
            name = octets.decode("latin-1")
    if "=?" in name:
        name = decode_words(name)
    return name.strip("\r\n")


def decode_words(text: str) -> str:
    """RFC 2047 encoded words -> text; broken words are left as written."""
    try:
        chunks = email.header.decode_header(text)
    except (ValueError, LookupError, binascii.Error):
        return text
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            try:
                out.append(chunk.decode(charset or "ascii", "replace"))
            except LookupError:
                out.append(chunk.decode("latin-1"))
        else:
            out.append(chunk)
    return "".join(out)


def b64decode(data: bytes) -> bytes:
    """Base64 as mail clients read it: junk characters skipped, a missing
    or broken tail tolerated (RFC 2045 section 6.8 asks decoders to ignore
    characters outside the alphabet)."""
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        clean = _B64_JUNK.sub(b"", data.split(b"=", 1)[0])
        clean = clean[: len(clean) - len(clean) % 4]
        try:
            return binascii.a2b_base64(clean)
        except binascii.Error:
            return b""


def uudecode_blocks(text: bytes) -> Iterator[tuple[str, bytes, int, int]]:
    """(name, data, start, end) of each `begin MODE NAME` ... `end` block
    (POSIX uuencode; the length character at the start of each line says
    how many bytes the line holds)."""
    pos = 0
    while True:
        m = _UU_BEGIN.search(text, pos)
        if m is None:
            return
        end = _UU_END.search(text, m.end())
        stop = end.end() if end else len(text)
        name = m.group(2).decode("utf-8", "replace")
        body = text[m.end() : end.start() if end else len(text)]
        if m.group(0).startswith(b"begin-base64"):
            data = b64decode(body.replace(b"====", b""))
        else:
            data = _uu_lines(body)
        yield name, data, m.start(), stop
        pos = stop


def _uu_lines(body: bytes) -> bytes:
    out = bytearray()
    for line in body.splitlines():
        if not line or line in (b"`", b" "):
            continue
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            # Some encoders pad lines short; decode what the length says.
            n = 1 + (((line[0] - 32) & 63) * 4 + 2) // 3
            try:
                out += binascii.a2b_uu(line[:n])
            except binascii.Error:
                continue
    return bytes(out)
