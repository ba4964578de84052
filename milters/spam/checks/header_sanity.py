"""Header and MIME sanity: what RFC 5322 and RFC 2045-2049 say a message has.

RFC 5322 section 3.6: Date and From are required, Message-ID should be
present (section 3.6.4, `<id-left@id-right>`), From appears once. Spam
tools often get these wrong, forge Received chains (RFC 5321 section 4.4:
each hop prepends one, "from ... by ..."), send HTML without a text
alternative, or encode plain ASCII subjects (RFC 2047 is for non-ASCII).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.utils import mktime_tz, parsedate_tz

from milters.context import ServiceContext
from milters.spam.checks.api import Check, CheckContext, CheckSpec, SymbolDef, SymbolHit
from milters.spam.view import MessageView
from postwarden.config.sections.spam import SpamMilterSettings

_MSGID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")
_ENCODED = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_WORDS = re.compile(r"[^\W\d_]{3,}")
_RCVD_TOKENS = re.compile(r"(?i)\b(?:by|from|with|id)\s")

DAY = 86400.0
FUTURE = 2 * DAY
PAST = 365 * DAY
MANY_RECEIVED = 12

SYMBOLS = {
    "MISSING_MID": SymbolDef(2.5, "no Message-ID (RFC 5322 section 3.6.4)"),
    "INVALID_MSGID": SymbolDef(1.7, "Message-ID is not <left@right>"),
    "MISSING_FROM": SymbolDef(2.0, "no From header (RFC 5322 section 3.6)"),
    "MULTIPLE_FROM": SymbolDef(2.0, "more than one From header"),
    "MISSING_DATE": SymbolDef(1.0, "no Date header (RFC 5322 section 3.6)"),
    "INVALID_DATE": SymbolDef(1.5, "Date does not parse (RFC 5322 section 3.3)"),
    "DATE_IN_FUTURE": SymbolDef(4.0, "Date more than 2 days ahead"),
    "DATE_IN_PAST": SymbolDef(1.0, "Date more than a year old"),
    "MISSING_SUBJECT": SymbolDef(2.0, "no Subject header"),
    "EMPTY_SUBJECT": SymbolDef(1.0, "Subject is empty"),
    "MISSING_TO": SymbolDef(2.0, "no To header"),
    "FROM_NEQ_ENVFROM": SymbolDef(0.0, "From domain differs from MAIL FROM's"),
    "RCVD_COUNT_ZERO": SymbolDef(0.1, "no Received header"),
    "RCVD_COUNT_HIGH": SymbolDef(1.0, f"more than {MANY_RECEIVED} Received headers"),
    "FORGED_RECEIVED": SymbolDef(0.5, "a Received header with no from/by/with/id"),
    "MIME_HTML_ONLY": SymbolDef(1.0, "HTML with no text alternative"),
    "MIME_PARTS_DIFFER": SymbolDef(1.0, "text and HTML alternatives say different things"),
    "MIME_BAD": SymbolDef(1.5, "broken MIME structure (missing boundary, defects)"),
    "MISSING_MIME_VERSION": SymbolDef(0.5, "Content-Type without MIME-Version (RFC 2045)"),
    "INVALID_CHARSET": SymbolDef(1.0, "a text part declares an unknown charset"),
    "SUBJ_ALL_CAPS": SymbolDef(3.0, "Subject in capitals"),
    "SUBJ_NEEDLESS_ENCODING": SymbolDef(1.0, "Subject encodes plain ASCII (RFC 2047)"),
}


def _date(view: MessageView, ctx: CheckContext) -> Iterator[SymbolHit]:
    if not view.count("Date"):
        yield SymbolHit("MISSING_DATE")
        return
    parsed = parsedate_tz(view.header("Date"))
    if parsed is None:
        yield SymbolHit("INVALID_DATE")
        return
    try:
        when = float(mktime_tz(parsed))
    except (OverflowError, ValueError):
        yield SymbolHit("INVALID_DATE")
        return
    now = ctx.message.clock.now()
    if when > now + FUTURE:
        yield SymbolHit("DATE_IN_FUTURE")
    elif when < now - PAST:
        yield SymbolHit("DATE_IN_PAST")


def _subject(view: MessageView) -> Iterator[SymbolHit]:
    if not view.count("Subject"):
        yield SymbolHit("MISSING_SUBJECT")
        return
    subject = view.subject
    if not subject:
        yield SymbolHit("EMPTY_SUBJECT")
        return
    letters = [c for c in subject if c.isalpha()]
    if len(letters) >= 10 and all(c.isupper() for c in letters):
        yield SymbolHit("SUBJ_ALL_CAPS")
    raw = view.raw_header("Subject")
    if "=?" in raw and subject.isascii() and _ENCODED.search(raw):
        yield SymbolHit("SUBJ_NEEDLESS_ENCODING")


def _mime(view: MessageView) -> Iterator[SymbolHit]:
    if view.count("Content-Type") and not view.count("MIME-Version"):
        yield SymbolHit("MISSING_MIME_VERSION")
    defects = [d.__class__.__name__ for part in view.mime.walk() for d in part.defects]
    if defects:
        yield SymbolHit("MIME_BAD", tuple(dict.fromkeys(defects))[:3])
    parts = view.text_parts
    html = [p for p in parts if p.html]
    plain = [p for p in parts if not p.html]
    if html and not plain:
        yield SymbolHit("MIME_HTML_ONLY")
    if html and plain and "multipart/alternative" in view.content_types:
        a = set(_WORDS.findall(plain[0].text[:20000].lower()))
        b = set(_WORDS.findall(html[0].text[:20000].lower()))
        if len(a) + len(b) >= 10:
            overlap = len(a & b) / max(1, min(len(a), len(b)))
            if overlap < 0.5:
                yield SymbolHit("MIME_PARTS_DIFFER", (f"{overlap:.0%} common",))
    bad = sorted({p.charset for p in parts if not p.charset_ok})
    if bad:
        yield SymbolHit("INVALID_CHARSET", tuple(c[:40] for c in bad[:3]))


def header_sanity(view: MessageView, ctx: CheckContext) -> Iterator[SymbolHit]:
    """Required headers, their form, Received chain, MIME structure."""
    if not view.count("Message-ID"):
        yield SymbolHit("MISSING_MID")
    elif not _MSGID.match(view.header("Message-ID")):
        yield SymbolHit("INVALID_MSGID")
    froms = view.headers.get("from", [])
    if not froms:
        yield SymbolHit("MISSING_FROM")
    elif len(froms) > 1:
        yield SymbolHit("MULTIPLE_FROM")
    if not view.count("To"):
        yield SymbolHit("MISSING_TO")
    yield from _date(view, ctx)
    yield from _subject(view)
    env_domain = view.env.sender_domain
    if env_domain and froms:
        addrs = view.from_addresses[:1]
        if addrs:
            domain = addrs[0].rpartition("@")[2].lower()
            if domain != env_domain and not domain.endswith("." + env_domain) \
                    and not env_domain.endswith("." + domain):  # fmt: skip
                yield SymbolHit("FROM_NEQ_ENVFROM", (domain, env_domain))
    received = view.headers.get("received", [])
    if not received:
        yield SymbolHit("RCVD_COUNT_ZERO")
    elif len(received) > MANY_RECEIVED:
        yield SymbolHit("RCVD_COUNT_HIGH", (str(len(received)),))
    # RFC 5321 section 4.4: a hop's stamp says from/by/with/id.
    for value in received:
        if not _RCVD_TOKENS.search(value):
            yield SymbolHit("FORGED_RECEIVED", (value[:60],))
            break
    yield from _mime(view)


def build(ctx: ServiceContext, settings: SpamMilterSettings) -> Check:
    return header_sanity


CHECK = CheckSpec(name="header_sanity", build=build, symbols=SYMBOLS)
