"""Content heuristics: what bulk and scam mail says and how it looks.

Signals from the decoded text (QP/base64 undone, HTML as text) and the
markup: sales and scam phrases, list-removal instructions in unsolicited
mail (RFC 2369 puts unsubscribe data in List-* headers, so a body that
explains removal without them is a bulk mailer's habit), shouting, money
amounts, HTML styling and images with little text, tracking-number subjects,
undisclosed recipients. Each is a small score; several together make spam.
Patterns are RE2 (linear time) and written here, not taken from elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import re2

from milters.context import ServiceContext
from milters.spam.checks.api import Check, CheckContext, CheckSpec, SymbolDef, SymbolHit
from milters.spam.view import MessageView
from postwarden.config.sections.spam import SpamMilterSettings

TEXT_LIMIT = 50_000  # characters of decoded text looked at
SHOUT_SAMPLE = 5_000  # characters of text whose capitals are counted
SUBJECT_TAIL = 500  # characters at the end of the Subject looked at

_PHRASES = [
    r"click here", r"act now", r"limited time", r"order (now|today)", r"risk[- ]free",
    r"no obligation", r"money[- ]back guarantee", r"100% (free|guaranteed|satisfied)",
    r"(earn|make) (\$|money|cash|extra)", r"work(ing)? (from|at) home", r"home[- ]based business",
    r"credit card", r"mortgage", r"(lowest|low) (rates?|prices?)", r"refinanc", r"debt",
    r"dear friend", r"this is not (a )?spam", r"not unsolicited",
    r"you (are|were) (receiving|selected)",
    r"opt[- ]?(in|out)", r"bulk (e-?mail|mail)", r"million (e-?mail )?addresses",
    r"(special|exclusive) (offer|promotion|deal)", r"free (gift|trial|offer|money|info)",
    r"(cash|prize|winner|lottery|you(.ve| have)? won)",
    r"(viagra|cialis|pharmacy|prescription|weight loss)",
    r"(investment|stock) (opportunity|alert|pick)", r"multi[- ]?level marketing",
    r"call (now|toll[- ]free)", r"toll[- ]free", r"(apply|sign up) (now|today)",
    r"satisfaction guaranteed", r"no (cost|fees?|catch)", r"what are you waiting for",
]  # fmt: skip
_REMOVAL = (
    r"(to (be )?(removed?|unsubscribe)|remov(e|al) (from|me)|unsubscribe (here|below)"
    r"|reply with .?remove)"
)

SYMBOLS = {
    "SPAM_PHRASES": SymbolDef(0.8, "sales/scam phrases (score x distinct phrases, up to 6)"),
    "BULK_REMOVAL": SymbolDef(2.5, "removal instructions in the body, no List-Unsubscribe"),
    "BODY_SHOUTING": SymbolDef(1.5, "much of the text is in capitals"),
    "BODY_EXCLAIM": SymbolDef(1.0, "many exclamation marks"),
    "MONEY_AMOUNTS": SymbolDef(1.0, "several money amounts"),
    "HTML_STYLING": SymbolDef(1.5, "HTML with font/colour styling and little text"),
    "HTML_IMAGES_LITTLE_TEXT": SymbolDef(2.0, "HTML images with little text"),
    "SUBJ_TRACKING_ID": SymbolDef(2.0, "Subject ends with a random-looking ID"),
    "SUBJ_EXCLAIM_MONEY": SymbolDef(1.5, "Subject with '!!' or money signs"),
    "SUBJ_SALES": SymbolDef(1.0, "Subject with a sales phrase"),
    "TO_UNDISCLOSED": SymbolDef(1.5, "To: undisclosed recipients or empty group"),
    "FROM_NO_NAME_NUMERIC": SymbolDef(1.0, "From has a numeric local part"),
    "HAS_LIST_HEADERS": SymbolDef(-1.0, "RFC 2369 List-* headers (mailing list)"),
    "IN_REPLY_TO": SymbolDef(-1.0, "a reply (In-Reply-To / References)"),
}


def _re(pattern: str) -> object:
    opts = re2.Options()
    opts.case_sensitive = False
    opts.log_errors = False
    return re2.compile(pattern, opts)


# Whole words at both ends ("won" must not match "wonder" or "won't"), but
# "refinanc" is a stem on purpose.
_PHRASE_RE = [_re(r"\b(?:" + p + r")" + ("" if p.endswith("financ") else r"\b")) for p in _PHRASES]
_ANY_PHRASE = _re("|".join(r"\b(?:" + p + r")" + ("" if p.endswith("financ") else r"\b")
                           for p in _PHRASES))  # fmt: skip
_REMOVAL_RE = _re(_REMOVAL)
_MONEY = re.compile(r"\$\s?\d[\d,]{0,15}(\.\d\d)?|\d[\d,]{0,15} ?(dollars|usd)\b", re.I)
_TRACKING = re.compile(
    r"(\s{3,20}|[\s_-])[\[(#]?[A-Za-z]{0,4}\d{3,12}[A-Za-z\d]{0,6}[\])]?\s{0,20}$"
)
_STYLE = re.compile(r"<\s*font\b|color\s*=|bgcolor|<\s*center\b", re.I)
_IMG = re.compile(r"<\s*img\b", re.I)
_LETTER = re.compile(r"[^\W\d_]")
_UPPER = re.compile(r"[A-Z\u00c0-\u00de]")


def content(view: MessageView, ctx: CheckContext) -> Iterator[SymbolHit]:
    """Phrases, removal instructions, shouting, money, HTML look, subject shape."""
    text = view.text[:TEXT_LIMIT]
    lists = any(view.count(h) for h in ("List-Id", "List-Unsubscribe", "List-Post"))
    if lists:
        yield SymbolHit("HAS_LIST_HEADERS")
    if view.count("In-Reply-To") or view.count("References"):
        yield SymbolHit("IN_REPLY_TO")
    if text and _ANY_PHRASE.search(text):  # type: ignore[attr-defined]
        found = [p for p, r in zip(_PHRASES, _PHRASE_RE, strict=True)
                 if r.search(text)]  # type: ignore[attr-defined]  # fmt: skip
        yield SymbolHit("SPAM_PHRASES", tuple(found[:6]), float(min(6, len(found))))
    if not lists and _REMOVAL_RE.search(text):  # type: ignore[attr-defined]
        yield SymbolHit("BULK_REMOVAL")
    sample = text[:SHOUT_SAMPLE]
    letters = _LETTER.subn("", sample)[1] if len(sample) > 200 else 0
    if letters > 200 and _UPPER.subn("", sample)[1] / letters > 0.35:
        yield SymbolHit("BODY_SHOUTING")
    if text.count("!") >= 8:
        yield SymbolHit("BODY_EXCLAIM", (str(text.count("!")),))
    if len(_MONEY.findall(text)) >= 3:
        yield SymbolHit("MONEY_AMOUNTS")
    html = view.html[:TEXT_LIMIT]
    if html:
        words = len(text.split())
        if len(_STYLE.findall(html)) >= 3 and words < 400:
            yield SymbolHit("HTML_STYLING")
        if _IMG.search(html) and words < 50:
            yield SymbolHit("HTML_IMAGES_LITTLE_TEXT")
    subject = view.subject[-SUBJECT_TAIL:]
    if subject:
        if _TRACKING.search(subject) and not re.search(r"\b(19|20)\d\d\s*$", subject):
            yield SymbolHit("SUBJ_TRACKING_ID")
        if "!!" in subject or "$" in subject:
            yield SymbolHit("SUBJ_EXCLAIM_MONEY")
        if _ANY_PHRASE.search(subject):  # type: ignore[attr-defined]
            yield SymbolHit("SUBJ_SALES")
    to = view.header("To").lower()
    if "undisclosed" in to or to.strip().endswith(":;"):
        yield SymbolHit("TO_UNDISCLOSED")
    frm = view.header("From")
    m = re.search(r"([^\s<@\"]+)@", frm)
    if m and re.fullmatch(r"\d{4,}", m.group(1)):
        yield SymbolHit("FROM_NO_NAME_NUMERIC")


def build(ctx: ServiceContext, settings: SpamMilterSettings) -> Check:
    return content


CHECK = CheckSpec(name="content", build=build, symbols=SYMBOLS)
