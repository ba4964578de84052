"""The message as every spam check sees it: parsed once, decoded once.

`MessageView` wraps the milter's `Message` and `Envelope` and computes, on
first use and only once, what several checks want: unfolded and RFC 2047
decoded headers, the text parts decoded from QP/base64 into Unicode with HTML
reduced to text, the URLs of the body with their link text. Checks must not
parse the message again; a check that needs something new adds a cached
property here, so the next check gets it for free.

Only the first `limit` bytes of the body are looked at (`max_scan_size`);
`truncated` says whether more existed. Decoding never raises: broken MIME,
unknown charsets and 8-bit bytes in headers become replacement characters.
"""

from __future__ import annotations

import codecs
import email.parser
import email.policy
import html
import re
from dataclasses import dataclass
from email.message import Message as StdMessage
from functools import cached_property

from milters.header_lines import decode_words, unfold
from milters.html_text import TAG, html_to_text
from milters.message import Envelope, Message
from milters.spam.lists import header_addresses
from postwarden.bayes.classifier import token_ids

MAX_URLS = 1000
"""URLs kept per message; a body with 10,000 links is judged on the first 1,000."""

MAX_PARTS = 64
"""MIME parts walked per message (a bomb of nested parts costs no more)."""

_URL = re.compile(r"""(?i)\b(?:https?://|www\.)[^\s<>"'()\[\]{}]{1,2000}""")
_HOST = re.compile(r"(?i)^(?:https?://)?(?:[^/@?#]*@)?(\[[0-9a-f:.]+\]|[^/:?#\s]+)")


@dataclass(frozen=True, slots=True)
class Url:
    """One link: the URL as written, its lower-cased host (no port, no
    userinfo; brackets kept for IPv6 literals) and, for HTML anchors, the
    visible link text."""

    url: str
    host: str
    text: str = ""
    in_html: bool = False


@dataclass(frozen=True, slots=True)
class TextPart:
    """A text/* part that is not an attachment.

    `text` is decoded to Unicode (HTML reduced to its visible text); `html`
    keeps the markup for HTML parts (empty otherwise); `charset` is what the
    part declared ("" when none), `charset_ok` whether Python knows it.
    """

    content_type: str
    text: str
    html: str = ""
    charset: str = ""
    charset_ok: bool = True


def url_host(url: str) -> str:
    m = _HOST.match(url.strip())
    if not m:
        return ""
    return m.group(1).rstrip(".").lower()


_A_OPEN = re.compile(r"(?i)<a\b([^<>]{0,2000})>")
_HREF = re.compile(r"""(?i)\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""")
ANCHOR_TEXT = 2000  # characters after <a ...> searched for </a>


def _anchors(markup: str) -> list[tuple[str, str]]:
    """(href, visible link text) of the first MAX_URLS anchors; the text is
    what lies before the next </a within ANCHOR_TEXT characters."""
    out = []
    low = markup.lower()
    for m in _A_OPEN.finditer(markup):
        h = _HREF.search(m.group(1))
        if not h:
            continue
        href = next(g for g in h.groups() if g is not None)
        close = low.find("</a", m.end(), m.end() + ANCHOR_TEXT)
        inner = markup[m.end() : close] if close >= 0 else ""
        label = " ".join(html.unescape(TAG.sub(" ", inner)).split())
        out.append((html.unescape(href).strip(), label[:500]))
        if len(out) >= MAX_URLS:
            break
    return out


class MessageView:
    """A read-only, lazily decoded view of one message for the spam checks.

    Safe to use from one thread (each message is scanned by one thread).
    """

    def __init__(self, msg: Message, env: Envelope, limit: int | None = None) -> None:
        self.msg = msg
        self.env = env
        self.limit = limit
        body = msg.body if limit is None else msg.body[:limit]
        self.body = body
        self.truncated = msg.truncated or len(body) < len(msg.body)

    # -- headers ------------------------------------------------------------

    @cached_property
    def headers(self) -> dict[str, list[str]]:
        """Lower-cased name -> decoded, unfolded values in order of appearance."""
        out: dict[str, list[str]] = {}
        for h in self.msg.headers:
            value = h.value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            out.setdefault(h.name.lower(), []).append(decode_words(unfold(value)).strip())
        return out

    def header(self, name: str) -> str:
        """First decoded value of `name`, "" when absent."""
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    def raw_header(self, name: str) -> str:
        """First raw value (folded, undecoded), "" when absent."""
        return self.msg.get(name)

    def count(self, name: str) -> int:
        return len(self.headers.get(name.lower(), ()))

    @property
    def subject(self) -> str:
        return self.header("Subject")

    @cached_property
    def from_addresses(self) -> tuple[str, ...]:
        """Addresses of the From header(s) (RFC 5322 section 3.6.2), in order."""
        return tuple(header_addresses(self.headers.get("from", [])))

    # -- MIME ---------------------------------------------------------------

    @cached_property
    def mime(self) -> StdMessage:
        """The stdlib MIME tree of the scanned bytes (compat32: fast, lenient)."""
        raw = self.msg.header_bytes() + b"\r\n" + self.body
        return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)

    @cached_property
    def bayes_token_ids(self) -> list[str]:
        """The Bayes token ids of `mime` (postwarden/bayes/classifier.py),
        once per message: the Bayes check and autolearn share them. The
        envelope sender stands in for the Return-Path header delivery adds,
        so mail is judged by the tokens it will be learned by from Junk."""
        return token_ids(self.mime, self.env.mail_from)

    @cached_property
    def content_types(self) -> tuple[str, ...]:
        """Content-Type of every MIME part in walk order (bounded by MAX_PARTS)."""
        out: list[str] = []
        for part in self.mime.walk():
            out.append(part.get_content_type())
            if len(out) >= MAX_PARTS:
                break
        return tuple(out)

    @cached_property
    def text_parts(self) -> tuple[TextPart, ...]:
        parts: list[TextPart] = []
        for n, part in enumerate(self.mime.walk()):
            if n >= MAX_PARTS:
                break
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
            declared = (part.get_content_charset() or "").strip()
            charset, ok = declared or "utf-8", True
            try:
                codecs.lookup(charset)
            except LookupError:
                charset, ok = "utf-8", False
            try:
                text = payload.decode(charset, "replace")
            except Exception:  # some codecs raise other errors on bad input
                text, ok = payload.decode("utf-8", "replace"), False
            ctype = part.get_content_type()
            if part.get_content_subtype() == "html":
                parts.append(TextPart(ctype, html_to_text(text), text, declared, ok))
            else:
                parts.append(TextPart(ctype, text, "", declared, ok))
        return tuple(parts)

    @cached_property
    def text(self) -> str:
        """All text parts, decoded, HTML as visible text, joined by newlines."""
        return "\n".join(p.text for p in self.text_parts)

    @cached_property
    def html(self) -> str:
        """The markup of all HTML parts joined (empty when there is none)."""
        return "\n".join(p.html for p in self.text_parts if p.html)

    # -- URLs ---------------------------------------------------------------

    @cached_property
    def urls(self) -> tuple[Url, ...]:
        """Links in HTML anchors (with their text) then URLs in the text, deduplicated,
        at most MAX_URLS."""
        seen: set[str] = set()
        out: list[Url] = []
        for part in self.text_parts:
            if part.html:
                for href, label in _anchors(part.html):
                    if len(out) >= MAX_URLS:
                        return tuple(out)
                    if not href.lower().startswith(("http:", "https:", "www.")):
                        continue
                    host = url_host(href)
                    if host and href not in seen:
                        seen.add(href)
                        out.append(Url(href, host, label, True))
            for m in _URL.finditer(part.text):
                if len(out) >= MAX_URLS:
                    return tuple(out)
                url = m.group(0).rstrip(".,;:!?")
                if url in seen:
                    continue
                seen.add(url)
                host = url_host(url)
                if host:
                    out.append(Url(url, host))
        return tuple(out)

    @cached_property
    def url_hosts(self) -> tuple[str, ...]:
        """Distinct URL hosts in order of first appearance."""
        return tuple(dict.fromkeys(u.host for u in self.urls))
